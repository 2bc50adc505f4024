//! `dropped_events`: the producer (buffer full, disconnected, write failed)
//! or the collector (queue full) dropped events; the model may be
//! incomplete, and other findings less reliable.

use std::collections::HashMap;

use awaitscope_wire::ProcessKey;

use super::{Cx, Detector, FindingKind, Hooks, Observation, Recollection};
use crate::model::Process;

/// The `dropped_events` detector: reports each process's drop counts when
/// they grow, remembering the counts it last reported.
#[derive(Debug, Default)]
pub struct DroppedEvents {
    /// (producer, collector) drop counts last reported, per process.
    reported: HashMap<ProcessKey, (u64, u64)>,
}

impl Detector for DroppedEvents {
    fn kind(&self) -> FindingKind {
        FindingKind::DroppedEvents
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            scan: true,
            ..Hooks::default()
        }
    }

    fn on_scan(&mut self, p: &Process, now: u64, cx: &mut Cx<'_>) {
        let reported = self.reported.entry(p.key).or_default();
        scan(p, now, cx, reported);
    }

    fn recall(&self, key: &ProcessKey) -> Option<Recollection> {
        let &(producer, collector) = self.reported.get(key).filter(|r| **r != (0, 0))?;
        Some(Recollection::ReportedDrops(producer, collector))
    }

    fn resume(&mut self, key: ProcessKey, r: &Recollection) {
        if let Recollection::ReportedDrops(producer, collector) = *r {
            self.reported.insert(key, (producer, collector));
        }
    }
}

/// Reports new drops of `p`, given the counts last reported (updated).
fn scan(p: &Process, now: u64, cx: &mut Cx<'_>, reported: &mut (u64, u64)) {
    let d = &p.dropped;
    let producer = d
        .buffer_full
        .saturating_add(d.disconnected)
        .saturating_add(d.write_failed);
    if producer > reported.0 {
        cx.observe(Observation {
            kind: FindingKind::DroppedEvents,
            process: p.key,
            key: "producer".into(),
            tasks: Vec::new(),
            location: None,
            message: format!(
                "the producer dropped {} events (buffer full: {}, disconnected: {}, write failed: {})",
                producer, p.dropped.buffer_full, p.dropped.disconnected, p.dropped.write_failed
            ),
            trace: Vec::new(),
            duration_ns: None,
            ts: now,
            new_occurrence: reported.0 == 0,
        });
        reported.0 = producer;
    }
    if p.collector_dropped > reported.1 {
        cx.observe(Observation {
            kind: FindingKind::DroppedEvents,
            process: p.key,
            key: "collector".into(),
            tasks: Vec::new(),
            location: None,
            message: format!(
                "the collector dropped {} events of this process (ingest queue full)",
                p.collector_dropped
            ),
            trace: Vec::new(),
            duration_ns: None,
            ts: now,
            new_occurrence: reported.1 == 0,
        });
        reported.1 = p.collector_dropped;
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::Scenario;
    use crate::FindingKind;
    use awaitscope_wire::DropCounts;

    #[test]
    fn producer_and_collector_drops() {
        let mut s = Scenario::new();
        s.dropped(DropCounts {
            buffer_full: 5,
            ..Default::default()
        });
        s.dropped(DropCounts {
            buffer_full: 7,
            write_failed: 1,
            ..Default::default()
        });
        let key = s.key();
        s.model_mut().note_collector_drops(key, 3);
        s.tick(1);
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::DroppedEvents).collect();
        assert_eq!(f.len(), 2);
        assert!(
            f[0].message.contains("dropped 8 events"),
            "{}",
            f[0].message
        );
        assert_eq!(f[0].count, 1);
        assert!(f[1].message.contains("collector dropped 3"));
    }

    /// The counts of the program's last flush arrive just before its
    /// goodbye: the finding says them without waiting for another scan.
    #[test]
    fn final_counts_reach_the_finding_at_goodbye() {
        let mut s = Scenario::new();
        s.dropped(DropCounts {
            buffer_full: 5,
            ..Default::default()
        });
        s.tick(1);
        s.dropped(DropCounts {
            buffer_full: 9,
            ..Default::default()
        });
        s.goodbye();
        let m = s.model();
        let f: Vec<_> = m.findings().of_kind(FindingKind::DroppedEvents).collect();
        assert_eq!(f.len(), 1);
        assert!(
            f[0].message.contains("dropped 9 events"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn no_drops_no_finding() {
        let mut s = Scenario::new();
        s.dropped(DropCounts::default());
        s.tick(1);
        assert_eq!(
            s.model()
                .findings()
                .of_kind(FindingKind::DroppedEvents)
                .count(),
            0
        );
    }
}
