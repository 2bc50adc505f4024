//! UI state: the current view, selections (which follow a task by id when
//! rows move), sort, filter, tree folding and pause. No rendering here.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use awaitscope_collector::model::TaskState;
use awaitscope_collector::FindingKind;

use crate::snapshot::{FindingRow, Snapshot, TaskKey, TaskRow};

/// The top-level views (Tab cycles through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Task table or tree.
    Tasks,
    /// Findings of the detectors, grouped by kind.
    Findings,
    /// Errors and panics with causal traces.
    Errors,
    /// tokio resources (not internal ones) with their holders and waiters.
    Resources,
    /// One task in detail (from Tasks, Findings or Errors).
    Detail,
}

impl View {
    /// Views reachable with Tab, in order.
    pub const TABS: [View; 4] = [View::Tasks, View::Findings, View::Errors, View::Resources];

    /// The name of the view in the tab bar.
    pub fn title(self) -> &'static str {
        match self {
            View::Tasks => "Tasks",
            View::Findings => "Findings",
            View::Errors => "Errors",
            View::Resources => "Resources",
            View::Detail => "Task",
        }
    }
}

/// Sortable columns of the task table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Running, scheduled, idle, then ended tasks.
    State,
    /// The task's name (unnamed tasks sort first).
    Name,
    /// Process, then task id: the order of spawning.
    Id,
    /// Time being polled, the running poll included.
    Busy,
    /// Time woken and waiting for a poll.
    Sched,
    /// Time neither polled nor scheduled: waiting to be woken.
    Idle,
    /// Polls so far, counting a poll not yet committed.
    Polls,
    /// Spawn location, as `file:line:col` text.
    Location,
    /// Findings naming the task plus its WARN and ERROR events.
    Warnings,
}

impl Column {
    /// Every column, in table order.
    pub const ALL: [Column; 9] = [
        Column::Warnings,
        Column::State,
        Column::Name,
        Column::Id,
        Column::Busy,
        Column::Sched,
        Column::Idle,
        Column::Polls,
        Column::Location,
    ];

    /// The column's header in the task table.
    pub fn title(self) -> &'static str {
        match self {
            Column::State => "State",
            Column::Name => "Name",
            Column::Id => "ID",
            Column::Busy => "Busy",
            Column::Sched => "Sched",
            Column::Idle => "Idle",
            Column::Polls => "Polls",
            Column::Location => "Location",
            Column::Warnings => "Warn",
        }
    }

    fn cmp(self, a: &TaskRow, b: &TaskRow) -> std::cmp::Ordering {
        match self {
            Column::State => state_rank(a.state).cmp(&state_rank(b.state)),
            Column::Name => a.name.cmp(&b.name),
            Column::Id => a.key.cmp(&b.key),
            Column::Busy => a.busy.cmp(&b.busy),
            Column::Sched => a.sched.cmp(&b.sched),
            Column::Idle => a.idle.cmp(&b.idle),
            Column::Polls => a.polls.cmp(&b.polls),
            Column::Location => a.location.cmp(&b.location),
            Column::Warnings => a.warnings.cmp(&b.warnings),
        }
        .then(a.key.cmp(&b.key))
    }
}

fn state_rank(s: TaskState) -> u8 {
    match s {
        TaskState::Running => 0,
        TaskState::Scheduled => 1,
        TaskState::Idle => 2,
        TaskState::Panicked => 3,
        TaskState::Cancelled => 4,
        TaskState::Completed => 5,
    }
}

/// A visible row of the task view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// A task (index into `Snapshot::tasks`).
    Task(usize),
    /// A process header (tree mode with several processes).
    Process(u16),
}

/// A visible row with its tree decoration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisRow {
    /// What it is.
    pub kind: RowKind,
    /// Indentation level in tree mode: 0 for a root task, or for a process
    /// row when several processes are shown (their root tasks are then at 1);
    /// 0 for every row of the table.
    pub depth: u16,
    /// Descendants (tree mode).
    pub descendants: u32,
    /// Whether it has children.
    pub has_children: bool,
    /// Whether it is folded.
    pub folded: bool,
    /// Whether it is the last of its siblings (for tree glyphs), and for
    /// each ancestor level whether that ancestor was the last.
    pub last: bool,
    /// Ancestors' `last` flags, outermost first (bits, up to 64 levels).
    pub rails: u64,
}

/// What an action asks of the data source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayCmd {
    /// Play or pause.
    Toggle,
    /// One frame forward.
    StepForward,
    /// One frame back.
    StepBack,
    /// Seek by seconds.
    Seek(i32),
    /// Seek to start.
    Start,
    /// Seek to the end.
    End,
}

/// Actions: what keys and mouse events mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Move up.
    Up,
    /// Move down.
    Down,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// First row.
    Top,
    /// Last row.
    Bottom,
    /// Fold (tree) or back.
    Left,
    /// Unfold (tree) or open.
    Right,
    /// Open the selection.
    Enter,
    /// Back / close.
    Back,
    /// Next view.
    NextView,
    /// Previous view.
    PrevView,
    /// Pause or resume (live: freeze the snapshot; replay: play/pause).
    TogglePause,
    /// Task tree on/off.
    ToggleTree,
    /// Sort by the next column.
    SortNext,
    /// Sort by the previous column.
    SortPrev,
    /// Reverse the sort.
    SortReverse,
    /// Start editing the filter.
    StartFilter,
    /// A character of the filter.
    FilterChar(char),
    /// Delete a filter character.
    FilterBackspace,
    /// Keep the filter, stop editing.
    FilterDone,
    /// Clear the filter.
    FilterClear,
    /// Help on/off.
    Help,
    /// Leave the UI (also Ctrl-C, even while editing the filter).
    Quit,
    /// Scroll the detail pane (a finding's, or the task detail) by this
    /// many lines, down when positive, without moving the selection.
    ScrollDetail(i16),
    /// Click at screen row `y`.
    Click(u16),
    /// Replay control.
    Replay(ReplayCmd),
    /// Fold all / unfold all.
    FoldAll,
}

/// The whole UI state.
#[derive(Debug)]
pub struct App {
    /// The snapshot the views draw (not replaced while paused).
    pub snap: Snapshot,
    /// Current view.
    pub view: View,
    /// Where Detail returns to.
    pub back: View,
    /// Tree mode of the task view.
    pub tree: bool,
    /// Sort column.
    pub sort: Column,
    /// Sort descending.
    pub desc: bool,
    /// Filter text.
    pub filter: String,
    /// Editing the filter.
    pub editing: bool,
    /// Folded tasks (tree mode).
    pub folded: HashSet<TaskKey>,
    /// The selected task (followed by id).
    pub selected: Option<TaskKey>,
    /// Cursor of the task view.
    pub cursor: usize,
    /// Visible task rows.
    pub rows: Vec<VisRow>,
    /// Cursor of findings / errors / resources.
    pub list_cursor: [usize; 3],
    /// Visible findings (indices), grouped by kind.
    pub finding_rows: Vec<FindingLine>,
    /// Lines the Detail view, or the pane of the selected finding, is
    /// scrolled down by (0: its top; back to 0 when the selection moves).
    pub detail_scroll: u16,
    /// Live views only: keep showing the current snapshot while new ones
    /// arrive (a task's detail asked for meanwhile is still taken). Replays
    /// pause the replay itself instead.
    pub paused: bool,
    /// Help shown.
    pub help: bool,
    /// Quit asked.
    pub quit: bool,
    /// First `g` of `gg` seen.
    pub pending_g: bool,
    /// Source description for the header.
    pub source: String,
    /// Source state: `true` connected / playing fine.
    pub source_ok: bool,
    /// Replay status, when replaying (position, end, playing).
    pub replay: Option<(u64, u64, bool)>,
    /// Events per second.
    pub event_rate: f64,
    /// Page height of the body (set by rendering).
    pub page: Cell<u16>,
    /// First visible row per list (set by rendering).
    pub offset: Cell<usize>,
    /// Screen row of the first body row (set by rendering).
    pub body_top: Cell<u16>,
    /// The task table's widest name, location and "waiting on" seen so
    /// far (set by rendering): its columns grow to fit them and do not
    /// shrink back as the rows shown change.
    pub task_widths: Cell<[u16; 3]>,
    /// A command for the data source, taken by the run loop.
    pub pending_replay: Option<ReplayCmd>,
}

/// A line of the findings view: a group header or a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingLine {
    /// Group header: kind, findings, occurrences.
    Group(FindingKind, usize, u64),
    /// A finding (index into `Snapshot::findings`).
    Item(usize),
}

impl Default for App {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl App {
    /// A UI over `snap`.
    pub fn new(snap: Snapshot) -> Self {
        let mut a = App {
            snap: Snapshot::default(),
            view: View::Tasks,
            back: View::Tasks,
            tree: false,
            sort: Column::State,
            desc: false,
            filter: String::new(),
            editing: false,
            folded: HashSet::new(),
            selected: None,
            cursor: 0,
            rows: Vec::new(),
            list_cursor: [0; 3],
            finding_rows: Vec::new(),
            detail_scroll: 0,
            paused: false,
            help: false,
            quit: false,
            pending_g: false,
            source: String::new(),
            source_ok: true,
            replay: None,
            event_rate: 0.0,
            page: Cell::new(20),
            offset: Cell::new(0),
            body_top: Cell::new(3),
            task_widths: Cell::new([0; 3]),
            pending_replay: None,
        };
        a.set_snapshot(snap);
        a
    }

    /// Replaces the snapshot, keeping the selection on the same task.
    pub fn set_snapshot(&mut self, snap: Snapshot) {
        // The selected finding and error are followed by identity: their
        // places change as findings come, recur (newest first) or are taken
        // back.
        let finding = self.finding_in(View::Findings).map(|f| f.id.clone());
        let error = self.finding_in(View::Errors).map(|f| f.id.clone());
        self.snap = snap;
        self.rebuild();
        let fs = &self.snap.findings;
        if let Some(id) = finding {
            if let Some(p) = self
                .finding_rows
                .iter()
                .position(|l| matches!(l, FindingLine::Item(i) if fs[*i].id == id))
            {
                self.list_cursor[0] = p;
            }
        }
        if let Some(id) = error {
            if let Some(p) = self
                .error_indices()
                .iter()
                .position(|&i| self.snap.findings[i].id == id)
            {
                self.list_cursor[1] = p;
            }
        }
    }

    /// Recomputes visible rows (sort, filter, tree) and re-finds the
    /// selected task.
    pub fn rebuild(&mut self) {
        self.rows = if self.tree {
            self.tree_rows()
        } else {
            self.table_rows()
        };
        self.finding_rows = self.finding_lines();
        // Follow the selected task.
        let pos = self.selected.and_then(|k| {
            self.rows
                .iter()
                .position(|r| matches!(r.kind, RowKind::Task(i) if self.snap.tasks[i].key == k))
        });
        match pos {
            Some(p) => self.cursor = p,
            None => {
                self.cursor = self.cursor.min(self.rows.len().saturating_sub(1));
                self.selected = self
                    .row_key(self.cursor)
                    .or(self.selected.filter(|_| self.rows.is_empty()));
            }
        }
        let lens = [
            self.finding_rows.len(),
            self.error_indices().len(),
            self.snap.resources.len(),
        ];
        for (c, n) in self.list_cursor.iter_mut().zip(lens) {
            *c = (*c).min(n.saturating_sub(1));
        }
    }

    fn row_key(&self, i: usize) -> Option<TaskKey> {
        match self.rows.get(i)?.kind {
            RowKind::Task(t) => Some(self.snap.tasks[t].key),
            RowKind::Process(_) => None,
        }
    }

    /// Whether task row `t` passes the filter.
    pub fn matches(&self, t: &TaskRow) -> bool {
        matches_query(&self.filter, t)
    }

    fn sorted(&self, idx: &mut [usize]) {
        let tasks = &self.snap.tasks;
        let col = self.sort;
        if self.desc {
            idx.sort_by(|a, b| col.cmp(&tasks[*b], &tasks[*a]));
        } else {
            idx.sort_by(|a, b| col.cmp(&tasks[*a], &tasks[*b]));
        }
    }

    fn table_rows(&self) -> Vec<VisRow> {
        let mut idx: Vec<usize> = (0..self.snap.tasks.len())
            .filter(|&i| self.filter.is_empty() || self.matches(&self.snap.tasks[i]))
            .collect();
        self.sorted(&mut idx);
        idx.into_iter()
            .map(|i| VisRow {
                kind: RowKind::Task(i),
                depth: 0,
                descendants: 0,
                has_children: false,
                folded: false,
                last: false,
                rails: 0,
            })
            .collect()
    }

    fn tree_rows(&self) -> Vec<VisRow> {
        let tasks = &self.snap.tasks;
        let index: HashMap<TaskKey, usize> =
            tasks.iter().enumerate().map(|(i, t)| (t.key, i)).collect();
        let parent_of = |i: usize| -> Option<usize> {
            let t = &tasks[i];
            let p = t.parent?;
            index
                .get(&TaskKey {
                    proc: t.key.proc,
                    id: p,
                })
                .copied()
                .filter(|&p| p != i)
        };
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
        let mut roots: Vec<Vec<usize>> = vec![Vec::new(); self.snap.processes.len().max(1)];
        for (i, task) in tasks.iter().enumerate() {
            match parent_of(i) {
                Some(p) => children[p].push(i),
                None => {
                    let pr = (task.key.proc as usize).min(roots.len() - 1);
                    roots[pr].push(i)
                }
            }
        }
        // Filter: keep matches and their ancestors.
        let keep: Option<Vec<bool>> = (!self.filter.is_empty()).then(|| {
            let mut keep = vec![false; tasks.len()];
            for i in 0..tasks.len() {
                if self.matches(&tasks[i]) {
                    let mut cur = Some(i);
                    let mut n = 0;
                    while let Some(c) = cur {
                        if keep[c] || n > tasks.len() {
                            break;
                        }
                        keep[c] = true;
                        cur = parent_of(c);
                        n += 1;
                    }
                }
            }
            keep
        });
        let kept = |i: &usize| keep.as_ref().is_none_or(|k| k[*i]);
        for c in children.iter_mut() {
            c.retain(kept);
            self.sorted(c);
        }
        for r in roots.iter_mut() {
            r.retain(kept);
            self.sorted(r);
        }
        // Descendant counts, iteratively (post-order).
        let mut desc = vec![0u32; tasks.len()];
        let mut order = Vec::with_capacity(tasks.len());
        let mut stack: Vec<usize> = roots.iter().flatten().copied().collect();
        let mut seen = vec![false; tasks.len()];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            order.push(i);
            stack.extend(children[i].iter().copied());
        }
        for &i in order.iter().rev() {
            desc[i] = children[i].iter().map(|&c| 1 + desc[c]).sum();
        }
        let multi = self.snap.processes.len() > 1;
        let mut out = Vec::new();
        for (pi, r) in roots.iter().enumerate() {
            let base = if multi {
                out.push(VisRow {
                    kind: RowKind::Process(pi as u16),
                    depth: 0,
                    descendants: r.iter().map(|&c| 1 + desc[c]).sum(),
                    has_children: !r.is_empty(),
                    folded: false,
                    last: pi + 1 == roots.len(),
                    rails: 0,
                });
                1
            } else {
                0
            };
            // (index, depth, last, rails)
            let mut stack: Vec<(usize, u16, bool, u64)> = r
                .iter()
                .enumerate()
                .rev()
                .map(|(j, &c)| (c, base, j + 1 == r.len(), 0))
                .collect();
            let mut visited = vec![false; 0];
            visited.resize(tasks.len(), false);
            while let Some((i, d, last, rails)) = stack.pop() {
                if std::mem::replace(&mut visited[i], true) {
                    continue;
                }
                let key = tasks[i].key;
                let folded = self.folded.contains(&key);
                out.push(VisRow {
                    kind: RowKind::Task(i),
                    depth: d,
                    descendants: desc[i],
                    has_children: !children[i].is_empty(),
                    folded,
                    last,
                    rails,
                });
                if !folded {
                    let rails = if d < 64 {
                        rails | (u64::from(last) << d)
                    } else {
                        rails
                    };
                    let ch = &children[i];
                    for (j, &c) in ch.iter().enumerate().rev() {
                        stack.push((c, d.saturating_add(1), j + 1 == ch.len(), rails));
                    }
                }
            }
        }
        out
    }

    fn finding_lines(&self) -> Vec<FindingLine> {
        let fs = &self.snap.findings;
        let mut groups: Vec<(FindingKind, Vec<usize>)> = Vec::new();
        for (i, f) in fs.iter().enumerate() {
            if !self.filter.is_empty() && !finding_matches(&self.filter, f) {
                continue;
            }
            match groups.iter_mut().find(|(k, _)| *k == f.kind) {
                Some((_, v)) => v.push(i),
                None => groups.push((f.kind, vec![i])),
            }
        }
        // Groups in order of their newest finding (findings are newest first).
        let mut out = Vec::new();
        for (k, v) in groups {
            let occ = v.iter().map(|&i| fs[i].count).sum();
            out.push(FindingLine::Group(k, v.len(), occ));
            out.extend(v.into_iter().map(FindingLine::Item));
        }
        out
    }

    /// Errors and panics (indices into findings), newest first.
    pub fn error_indices(&self) -> Vec<usize> {
        self.snap
            .findings
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.kind, FindingKind::Error | FindingKind::Panic))
            .filter(|(_, f)| self.filter.is_empty() || finding_matches(&self.filter, f))
            .map(|(i, _)| i)
            .collect()
    }

    /// The selected finding (Findings view) or error (Errors view).
    pub fn selected_finding(&self) -> Option<&FindingRow> {
        self.finding_in(self.view)
    }

    /// The finding under the cursor of `view` (Findings or Errors).
    fn finding_in(&self, view: View) -> Option<&FindingRow> {
        match view {
            View::Findings => match self.finding_rows.get(self.list_cursor[0])? {
                FindingLine::Item(i) => self.snap.findings.get(*i),
                FindingLine::Group(..) => None,
            },
            View::Errors => {
                let e = self.error_indices();
                self.snap.findings.get(*e.get(self.list_cursor[1])?)
            }
            _ => None,
        }
    }

    fn list_len(&self) -> usize {
        match self.view {
            View::Tasks => self.rows.len(),
            View::Findings => self.finding_rows.len(),
            View::Errors => self.error_indices().len(),
            View::Resources => self.snap.resources.len(),
            View::Detail => 0,
        }
    }

    fn move_cursor(&mut self, delta: isize) {
        let n = self.list_len();
        if self.view == View::Detail {
            let s = self.detail_scroll as isize + delta;
            self.detail_scroll = s.clamp(0, u16::MAX as isize) as u16;
            return;
        }
        if n == 0 {
            return;
        }
        let cur = match self.view {
            View::Tasks => self.cursor,
            View::Findings => self.list_cursor[0],
            View::Errors => self.list_cursor[1],
            _ => self.list_cursor[2],
        };
        let new = (cur as isize + delta).clamp(0, n as isize - 1) as usize;
        self.set_cursor(new);
    }

    fn set_cursor(&mut self, new: usize) {
        match self.view {
            View::Tasks => {
                self.cursor = new;
                if let Some(k) = self.row_key(new) {
                    self.selected = Some(k);
                }
            }
            View::Findings | View::Errors => {
                let i = usize::from(self.view == View::Errors);
                if self.list_cursor[i] != new {
                    self.detail_scroll = 0;
                }
                self.list_cursor[i] = new;
            }
            View::Resources => self.list_cursor[2] = new,
            View::Detail => {}
        }
    }

    fn open_task(&mut self, key: TaskKey) {
        self.selected = Some(key);
        if self.view != View::Detail {
            self.back = self.view;
        }
        self.view = View::Detail;
        self.detail_scroll = 0;
        self.rebuild();
    }

    /// Whether the selected task's detail needs a fresh snapshot.
    pub fn wants_detail(&self) -> Option<TaskKey> {
        self.selected.filter(|_| self.view == View::Detail)
    }

    /// Applies an action.
    pub fn apply(&mut self, a: Action) {
        if a != Action::Top {
            self.pending_g = false;
        }
        let page = self.page.get().max(1) as isize;
        match a {
            Action::Quit => self.quit = true,
            Action::Help => self.help = !self.help,
            _ if self.help => {
                if matches!(a, Action::Back | Action::Enter) {
                    self.help = false;
                }
            }
            Action::ScrollDetail(d) => {
                let s = self.detail_scroll as isize + d as isize;
                self.detail_scroll = s.clamp(0, u16::MAX as isize) as u16;
            }
            Action::Up => self.move_cursor(-1),
            Action::Down => self.move_cursor(1),
            Action::PageUp => self.move_cursor(-page),
            Action::PageDown => self.move_cursor(page),
            Action::Top => {
                if self.view == View::Detail {
                    self.detail_scroll = 0;
                } else {
                    self.set_cursor(0);
                }
            }
            Action::Bottom => {
                let n = self.list_len();
                if self.view == View::Detail {
                    self.detail_scroll = u16::MAX / 2;
                } else {
                    self.set_cursor(n.saturating_sub(1));
                }
            }
            Action::Left => match self.view {
                View::Tasks if self.tree => {
                    if let Some(k) = self.row_key(self.cursor) {
                        let row = &self.rows[self.cursor];
                        if row.has_children && !row.folded {
                            self.folded.insert(k);
                            self.rebuild();
                        } else if let Some(p) = self.parent_row(self.cursor) {
                            self.set_cursor(p);
                        }
                    }
                }
                View::Detail => self.apply(Action::Back),
                _ => {}
            },
            Action::Right => match self.view {
                View::Tasks if self.tree => {
                    if let Some(k) = self.row_key(self.cursor) {
                        if self.folded.remove(&k) {
                            self.rebuild();
                        } else {
                            self.open_task(k);
                        }
                    }
                }
                View::Tasks => self.apply(Action::Enter),
                _ => {}
            },
            Action::FoldAll => {
                if self.tree {
                    if self.folded.is_empty() {
                        self.folded = self
                            .rows
                            .iter()
                            .filter(|r| r.has_children)
                            .filter_map(|r| match r.kind {
                                RowKind::Task(i) => Some(self.snap.tasks[i].key),
                                _ => None,
                            })
                            .collect();
                    } else {
                        self.folded.clear();
                    }
                    self.rebuild();
                }
            }
            Action::Enter => match self.view {
                View::Tasks => {
                    if let Some(k) = self.row_key(self.cursor) {
                        self.open_task(k);
                    }
                }
                View::Findings | View::Errors => {
                    if let Some(k) = self
                        .selected_finding()
                        .and_then(|f| f.tasks.first())
                        .map(|t| t.0)
                    {
                        self.open_task(k);
                    } else if let Some(FindingLine::Group(..)) =
                        self.finding_rows.get(self.list_cursor[0])
                    {
                        self.move_cursor(1);
                    }
                }
                View::Resources => {
                    let r = self.snap.resources.get(self.list_cursor[2]);
                    if let Some(k) = r
                        .and_then(|r| r.holders.first().or(r.waiters.first()))
                        .map(|t| t.0)
                    {
                        self.open_task(k);
                    }
                }
                View::Detail => {}
            },
            Action::Back => {
                if self.editing {
                    self.editing = false;
                } else if self.view == View::Detail {
                    self.view = self.back;
                    self.detail_scroll = 0;
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                    self.rebuild();
                }
            }
            Action::NextView | Action::PrevView => {
                let cur = View::TABS.iter().position(|v| *v == self.view).unwrap_or(0);
                let n = View::TABS.len();
                let next = if a == Action::NextView {
                    (cur + 1) % n
                } else {
                    (cur + n - 1) % n
                };
                self.view = View::TABS[next];
                self.detail_scroll = 0;
            }
            Action::TogglePause => {
                if self.replay.is_some() {
                    self.pending_replay = Some(ReplayCmd::Toggle);
                } else {
                    self.paused = !self.paused;
                }
            }
            Action::ToggleTree => {
                self.tree = !self.tree;
                self.view = View::Tasks;
                self.rebuild();
            }
            Action::SortNext | Action::SortPrev => {
                let i = Column::ALL
                    .iter()
                    .position(|c| *c == self.sort)
                    .unwrap_or(0);
                let n = Column::ALL.len();
                let j = if a == Action::SortNext {
                    (i + 1) % n
                } else {
                    (i + n - 1) % n
                };
                self.sort = Column::ALL[j];
                // Numbers read best largest first.
                self.desc = !matches!(
                    self.sort,
                    Column::Name | Column::Location | Column::Id | Column::State
                );
                self.rebuild();
            }
            Action::SortReverse => {
                self.desc = !self.desc;
                self.rebuild();
            }
            Action::StartFilter => self.editing = true,
            Action::FilterChar(c) => {
                self.filter.push(c);
                self.rebuild();
            }
            Action::FilterBackspace => {
                self.filter.pop();
                self.rebuild();
            }
            Action::FilterDone => self.editing = false,
            Action::FilterClear => {
                self.editing = false;
                self.filter.clear();
                self.rebuild();
            }
            Action::Click(y) => {
                let top = self.body_top.get();
                if y >= top && self.view != View::Detail {
                    let i = self.offset.get() + (y - top) as usize;
                    if i < self.list_len() {
                        self.set_cursor(i);
                    }
                }
            }
            Action::Replay(c) => self.pending_replay = Some(c),
        }
    }

    fn parent_row(&self, i: usize) -> Option<usize> {
        let d = self.rows.get(i)?.depth;
        (0..i).rev().find(|&j| self.rows[j].depth < d)
    }

    /// Cursor of the current list view.
    pub fn current_cursor(&self) -> usize {
        match self.view {
            View::Tasks => self.cursor,
            View::Findings => self.list_cursor[0],
            View::Errors => self.list_cursor[1],
            View::Resources => self.list_cursor[2],
            View::Detail => 0,
        }
    }
}

/// Fuzzy subsequence match, case-insensitive.
pub fn fuzzy(hay: &str, needle: &str) -> bool {
    let mut h = hay.chars().flat_map(char::to_lowercase);
    needle
        .chars()
        .flat_map(char::to_lowercase)
        .all(|n| h.any(|c| c == n))
}

/// The filter query: space-separated terms, all of which must match. A
/// term is `state:idle`, `name:TEXT`, `loc:TEXT`, `id:N`, `kind:TEXT`,
/// `warn` (tasks with warnings), or free text fuzzy-matched against name,
/// location and state.
pub fn matches_query(q: &str, t: &TaskRow) -> bool {
    q.split_whitespace().all(|term| {
        if let Some((k, v)) = term.split_once(':') {
            match k {
                "state" | "s" => t.state.as_str().starts_with(&v.to_lowercase()),
                "name" | "n" => fuzzy(&t.name, v),
                "loc" | "l" | "location" => t.location.to_lowercase().contains(&v.to_lowercase()),
                "id" => v
                    .parse::<u64>()
                    .is_ok_and(|v| v == t.key.id || Some(v) == t.tokio_id),
                "kind" => t.kind.eq_ignore_ascii_case(v),
                _ => false,
            }
        } else if term == "warn" || term == "!" {
            t.warnings > 0
        } else {
            fuzzy(&t.name, term)
                || t.location.to_lowercase().contains(&term.to_lowercase())
                || t.state.as_str() == term.to_lowercase()
                || t.waiting.to_lowercase().contains(&term.to_lowercase())
        }
    })
}

/// Whether a finding matches the filter (kind, message, location, tasks).
pub fn finding_matches(q: &str, f: &FindingRow) -> bool {
    q.split_whitespace().all(|term| {
        let term = term.to_lowercase();
        f.kind.as_str().contains(&term)
            || f.message.to_lowercase().contains(&term)
            || f.location.to_lowercase().contains(&term)
            || f.tasks
                .iter()
                .any(|(_, l)| l.to_lowercase().contains(&term))
    })
}
