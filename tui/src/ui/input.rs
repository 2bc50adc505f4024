//! Keys and mouse events to [`Action`]s.

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};

use super::app::{Action, App, ReplayCmd, View};

/// Maps a terminal event to actions (none, one, or three for a scroll).
pub fn map_event(app: &mut App, ev: &Event) -> Vec<Action> {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => map_key(app, k).into_iter().collect(),
        Event::Mouse(m) => match m.kind {
            MouseEventKind::ScrollDown => vec![Action::Down; 3],
            MouseEventKind::ScrollUp => vec![Action::Up; 3],
            MouseEventKind::Down(_) => vec![Action::Click(m.row)],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Maps a key to an action, given the state (filter editing, `gg`).
pub fn map_key(app: &mut App, k: &KeyEvent) -> Option<Action> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(k.code, KeyCode::Char('c')) {
        return Some(Action::Quit);
    }
    if app.editing {
        return match k.code {
            KeyCode::Enter => Some(Action::FilterDone),
            KeyCode::Esc => Some(Action::FilterClear),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) if !ctrl => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    if ctrl {
        return match k.code {
            KeyCode::Char('d') => Some(Action::PageDown),
            KeyCode::Char('u') => Some(Action::PageUp),
            _ => None,
        };
    }
    let replay = app.replay.is_some();
    Some(match k.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::Char('J') => Action::ScrollDetail(1),
        KeyCode::Char('K') => Action::ScrollDetail(-1),
        KeyCode::Left | KeyCode::Char('h') => Action::Left,
        KeyCode::Right | KeyCode::Char('l') => Action::Right,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        KeyCode::Char('g') => {
            if app.pending_g {
                app.pending_g = false;
                Action::Top
            } else {
                app.pending_g = true;
                return None;
            }
        }
        KeyCode::Enter => Action::Enter,
        KeyCode::Esc | KeyCode::Backspace => Action::Back,
        KeyCode::Tab => Action::NextView,
        KeyCode::BackTab => Action::PrevView,
        KeyCode::Char('1') => return goto(app, View::Tasks),
        KeyCode::Char('2') => return goto(app, View::Findings),
        KeyCode::Char('3') => return goto(app, View::Errors),
        KeyCode::Char('4') => return goto(app, View::Resources),
        KeyCode::Char('p') | KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Char('t') => Action::ToggleTree,
        KeyCode::Char('s') | KeyCode::Char('>') => Action::SortNext,
        KeyCode::Char('<') => Action::SortPrev,
        KeyCode::Char('r') => Action::SortReverse,
        KeyCode::Char('/') => Action::StartFilter,
        KeyCode::Char('z') => Action::FoldAll,
        KeyCode::Char('.') if replay => Action::Replay(ReplayCmd::StepForward),
        KeyCode::Char(',') if replay => Action::Replay(ReplayCmd::StepBack),
        KeyCode::Char(']') if replay => Action::Replay(ReplayCmd::Seek(5)),
        KeyCode::Char('[') if replay => Action::Replay(ReplayCmd::Seek(-5)),
        KeyCode::Char('{') if replay => Action::Replay(ReplayCmd::Start),
        KeyCode::Char('}') if replay => Action::Replay(ReplayCmd::End),
        _ => return None,
    })
}

fn goto(app: &mut App, v: View) -> Option<Action> {
    if app.view != v {
        app.detail_scroll = 0;
    }
    app.view = v;
    None
}

/// Key help: (keys, what), per section.
pub const HELP: &[(&str, &[(&str, &str)])] = &[
    (
        "Everywhere",
        &[
            (
                "Tab / S-Tab, 1-4",
                "next / previous view: Tasks, Findings, Errors, Resources",
            ),
            ("j k / ↑ ↓", "move; mouse wheel scrolls, click selects"),
            ("gg G / Home End", "first / last row"),
            ("J K", "scroll the detail pane (a finding's trace)"),
            ("C-d C-u / PgDn PgUp", "page down / up"),
            ("Enter", "open: task detail; from a finding, its task"),
            ("Esc", "back; clears the filter"),
            ("/", "filter (Enter keeps it, Esc clears)"),
            ("p / space", "pause (live) / play-pause (replay)"),
            ("?", "this help"),
            ("q / C-c", "quit"),
        ],
    ),
    (
        "Tasks",
        &[
            ("t", "table / spawn tree"),
            ("h l / ← →", "tree: fold / unfold, or go to parent"),
            ("z", "tree: fold all / unfold all"),
            ("s < >", "sort by next / previous column"),
            ("r", "reverse the sort"),
        ],
    ),
    (
        "Filter",
        &[
            ("text", "fuzzy on name, location, state, await"),
            (
                "state:idle name:x loc:y id:N kind:k warn",
                "terms, all must match",
            ),
        ],
    ),
    (
        "Replay",
        &[
            ("space / p", "play / pause"),
            (". ,", "step one frame forward / back"),
            ("] [", "seek 5 s forward / back"),
            ("} {", "end / start"),
        ],
    ),
];
