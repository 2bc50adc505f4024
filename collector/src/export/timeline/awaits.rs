//! Await trees on the timeline: the tree the producer sends for a poll
//! becomes slices on the task's "awaits" lanes (one lane per leaf, so that
//! slices on a lane nest), await times per await point, and the flame
//! stacks the task's pending and busy time is weighed on. And the window:
//! lanes begun before it are clipped to its start, lanes open at its end
//! end there.

use std::collections::HashSet;
use std::io;

use awaitscope_wire::{ProcessKey, SpanClass, SpanId, TreeNode};

use super::state::{
    clean_frame, emit, record_await, Lane, LaneEntry, NodeW, PState, Sinks, TaskW, WalkState,
};
use super::{Arg, Args, Ev, Track, TrackKind, WalkSummary};
use crate::model::Process;

/// Opens or closes the window as the process clock reaches `now`.
pub(super) fn advance(
    sh: &mut WalkState,
    ps: &mut PState,
    sinks: Sinks<'_, '_>,
    now: u64,
) -> io::Result<()> {
    let from = sh.opts.from_ns;
    let to = sh.opts.to_ns;
    let p = &mut *ps;
    let key = p.key;
    if !p.win_open && from.is_none_or(|f| now >= f) {
        p.win_open = true;
        let at = from.unwrap_or(0);
        let mut ids: Vec<SpanId> = p.tasks.keys().copied().collect();
        ids.sort();
        for id in ids {
            let t = p.tasks.get_mut(&id).expect("task");
            for lane in &mut t.lanes {
                for e in &mut lane.stack {
                    if !e.begun && !p.win_closed {
                        // Clipped to the window.
                        let label = t
                            .tree
                            .iter()
                            .find(|n| n.span == e.span)
                            .map_or_else(|| "await".to_string(), |n| n.label.to_string());
                        if !lane.emitted {
                            lane.emitted = true;
                            let tr = Track {
                                id: lane.track,
                                parent: t.track,
                                name: "awaits".into(),
                                kind: TrackKind::Lane(0),
                            };
                            emit(sinks, key, &Ev::Track(&tr))?;
                        }
                        emit(
                            sinks,
                            key,
                            &Ev::Begin {
                                track: lane.track,
                                ts: at,
                                name: &label,
                                cat: "await",
                                args: &vec![("clipped", Arg::S("window start".into()))],
                            },
                        )?;
                        e.begun = true;
                    }
                }
            }
        }
    }
    if !p.win_closed && to.is_some_and(|t| now > t) {
        p.win_closed = true;
        let at = to.unwrap_or(now);
        let mut ids: Vec<SpanId> = p.tasks.keys().copied().collect();
        ids.sort();
        for id in ids {
            let t = p.tasks.get_mut(&id).expect("task");
            for lane in &mut t.lanes {
                for e in lane.stack.iter_mut().rev() {
                    if e.begun {
                        emit(
                            sinks,
                            key,
                            &Ev::End {
                                track: lane.track,
                                ts: at,
                            },
                        )?;
                        e.begun = false;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The producer sent the await tree of `task`'s poll: its flame stacks,
/// await times and lanes.
pub(super) fn tree_sent(
    sh: &mut WalkState,
    ps: &mut PState,
    sinks: Sinks<'_, '_>,
    m: &Process,
    task: SpanId,
    nodes: &[TreeNode],
) -> io::Result<()> {
    let key = ps.key;
    let (Some(t), Some(mt)) = (ps.tasks.get(&task), m.tasks.get(&task)) else {
        return Ok(());
    };
    let p = &*ps;
    let start = mt.poll_start.unwrap_or(m.now);
    // The new tree (async-op polls and unknown spans are transparent).
    let mut tree: Vec<NodeW> = Vec::new();
    let mut path: Vec<(u16, Option<usize>)> = Vec::new();
    for n in nodes {
        while path.last().is_some_and(|(d, _)| *d >= n.depth) {
            path.pop();
        }
        let parent = path.last().and_then(|(_, i)| *i);
        let node = match p.spans.get(&n.span).or_else(|| p.closed.get(&n.span)) {
            Some(s) if s.class != SpanClass::AsyncOpPoll && !s.folded => {
                match tree
                    .iter()
                    .position(|x| x.span == n.span && x.parent == parent)
                {
                    Some(i) => Some(i),
                    None => {
                        tree.push(NodeW {
                            span: n.span,
                            parent,
                            label: s.label.clone(),
                            point: s.point.clone(),
                        });
                        Some(tree.len() - 1)
                    }
                }
            }
            _ => parent,
        };
        path.push((n.depth, node));
    }
    // Leaf paths.
    let leaves: Vec<usize> = (0..tree.len())
        .filter(|&i| !tree.iter().any(|n| n.parent == Some(i)))
        .collect();
    let paths: Vec<Vec<usize>> = leaves
        .iter()
        .map(|&l| {
            let mut v = vec![l];
            let mut c = l;
            while let Some(pa) = tree[c].parent {
                v.push(pa);
                c = pa;
                if v.len() > tree.len() {
                    break;
                }
            }
            v.reverse();
            v
        })
        .collect();
    let prefix = format!("{};{}", clean_frame(&p.name), clean_frame(&t.group));
    let stacks: Vec<String> = if paths.is_empty() {
        vec![prefix]
    } else {
        paths
            .iter()
            .map(|pa| {
                let mut s = prefix.clone();
                for &i in pa {
                    s.push(';');
                    s.push_str(&clean_frame(&tree[i].point));
                }
                s
            })
            .collect()
    };
    let leaf_stacks: Vec<u32> = stacks.into_iter().map(|s| sh.intern(s)).collect();
    let in_win = sh.in_window(start);
    let gone_at = mt.last_poll_end.unwrap_or(start);
    let p = &mut *ps;
    let win_closed = p.win_closed;
    let win_open = p.win_open;
    let Some(t) = p.tasks.get_mut(&task) else {
        return Ok(());
    };
    t.leaf_stacks = leaf_stacks;
    // Await stats: nodes that left the tree ended with the last poll.
    let new_spans: HashSet<SpanId> = tree.iter().map(|n| n.span).collect();
    let mut still = Vec::with_capacity(t.open.len());
    for (s, st, point) in t.open.drain(..) {
        if new_spans.contains(&s) {
            still.push((s, st, point));
        } else {
            record_await(
                &mut sh.summary.await_points,
                &point,
                gone_at.saturating_sub(st),
            );
        }
    }
    for n in &tree {
        if !still.iter().any(|(s, _, _)| *s == n.span) {
            still.push((n.span, start, n.point.clone()));
        }
    }
    t.open = still;
    // Lanes.
    let task_track = t.track;
    for (li, pa) in paths.iter().enumerate() {
        if t.lanes.len() <= li {
            let id = sh.track_id();
            t.lanes.push(Lane {
                track: id,
                emitted: false,
                stack: Vec::new(),
            });
        }
        let lane = &mut t.lanes[li];
        let common = lane
            .stack
            .iter()
            .zip(pa.iter())
            .take_while(|(e, &i)| e.span == tree[i].span)
            .count();
        while lane.stack.len() > common {
            let e = lane.stack.pop().expect("non-empty");
            end_entry(sinks, key, lane.track, &e, &new_spans, start, gone_at)?;
        }
        for &i in &pa[common..] {
            let begin = in_win && win_open && !win_closed && task_track.is_some();
            if begin {
                if !lane.emitted {
                    lane.emitted = true;
                    let tr = Track {
                        id: lane.track,
                        parent: task_track,
                        name: if li == 0 {
                            "awaits".into()
                        } else {
                            format!("awaits {}", li + 1)
                        },
                        kind: TrackKind::Lane(li),
                    };
                    emit(sinks, key, &Ev::Track(&tr))?;
                }
                let args: Args = vec![("at", Arg::S(tree[i].point.to_string()))];
                emit(
                    sinks,
                    key,
                    &Ev::Begin {
                        track: lane.track,
                        ts: start,
                        name: &tree[i].label,
                        cat: "await",
                        args: &args,
                    },
                )?;
            }
            lane.stack.push(LaneEntry {
                span: tree[i].span,
                start,
                begun: begin,
            });
        }
    }
    for lane in t.lanes.iter_mut().skip(paths.len()) {
        while let Some(e) = lane.stack.pop() {
            end_entry(sinks, key, lane.track, &e, &new_spans, start, gone_at)?;
        }
    }
    t.tree = tree;
    Ok(())
}

/// Ends the await slice of lane entry `e` (on lane track `track`) left by
/// a poll starting at `start`: a span still in the new tree (entered again,
/// on another lane or deeper) ends where the new poll starts; one gone from
/// it ended with the last poll (`gone_at`), never before it began.
fn end_entry(
    sinks: Sinks<'_, '_>,
    key: ProcessKey,
    track: u64,
    e: &LaneEntry,
    new_spans: &HashSet<SpanId>,
    start: u64,
    gone_at: u64,
) -> io::Result<()> {
    if !e.begun {
        return Ok(());
    }
    let ts = if new_spans.contains(&e.span) {
        start
    } else {
        gone_at.max(e.start)
    };
    emit(sinks, key, &Ev::End { track, ts })
}

/// Ends every await slice of `t` at `at` (stats and lanes).
pub(super) fn end_awaits(
    summary: &mut WalkSummary,
    key: ProcessKey,
    t: &mut TaskW,
    at: u64,
    sinks: Sinks<'_, '_>,
) -> io::Result<()> {
    for (_, st, point) in t.open.drain(..) {
        record_await(&mut summary.await_points, &point, at.saturating_sub(st));
    }
    for lane in &mut t.lanes {
        while let Some(e) = lane.stack.pop() {
            if e.begun {
                emit(
                    sinks,
                    key,
                    &Ev::End {
                        track: lane.track,
                        ts: at.max(e.start),
                    },
                )?;
            }
        }
    }
    Ok(())
}
