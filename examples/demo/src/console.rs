//! Where the demo's narration goes: log lines (steps, events, listings) scroll, and in live mode
//! a status table stays at the bottom of the terminal, redrawn in place with ANSI escapes.

use std::io::Write;
use std::sync::Mutex;

/// How the demo prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A terminal: colours, and a live traffic table redrawn in place.
    Live,
    /// Plain lines only (logs, CI): a one-line traffic summary every second.
    Plain,
    /// Like `Plain`, but through the standard `print!` macro, so that a test harness captures
    /// it (and shows it only when the test fails).
    Captured,
    /// Nothing.
    Quiet,
}

impl Output {
    /// `Live` when stdout is a terminal, else `Plain`.
    pub fn detect() -> Output {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            Output::Live
        } else {
            Output::Plain
        }
    }
}

#[derive(Default)]
struct Screen {
    /// The live table (kept at the bottom).
    table: Vec<String>,
    /// How many lines of it are on screen now.
    drawn: usize,
}

/// The demo's output (see the module docs). Write errors (a closed pipe) are ignored.
pub struct Console {
    output: Output,
    screen: Mutex<Screen>,
}

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl Console {
    /// A console printing in `output` mode.
    pub fn new(output: Output) -> Console {
        Console {
            output,
            screen: Mutex::new(Screen::default()),
        }
    }

    /// The output mode.
    pub fn output(&self) -> Output {
        self.output
    }

    fn with_screen(&self, f: impl FnOnce(&mut Screen, &mut Vec<u8>)) {
        if self.output == Output::Quiet {
            return;
        }
        let mut screen = self.screen.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = Vec::new();
        f(&mut screen, &mut buf);
        if self.output == Output::Captured {
            print!("{}", String::from_utf8_lossy(&buf));
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }

    /// Prints lines above the live table.
    pub fn print(&self, lines: &[String]) {
        let live = self.output == Output::Live;
        self.with_screen(|screen, buf| {
            if live {
                erase(screen, buf);
            }
            for l in lines {
                buf.extend_from_slice(l.as_bytes());
                buf.push(b'\n');
            }
            if live {
                draw(screen, buf);
            }
        });
    }

    /// A step of the story: `==> text`.
    pub fn step(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        let line = match self.output {
            Output::Live => format!("\n{BOLD}==> {text}{RESET}"),
            _ => format!("\n==> {text}"),
        };
        self.print(&[line]);
    }

    /// An indented detail line.
    pub fn line(&self, text: impl AsRef<str>) {
        self.print(&[format!("    {}", text.as_ref())]);
    }

    /// An event from one of the actors (`kubelet`, `etcd`, ...).
    pub fn event(&self, source: &str, text: impl AsRef<str>) {
        let line = match self.output {
            Output::Live => format!("    {DIM}{source:<8}{RESET} {}", text.as_ref()),
            _ => format!("    {source:<8} {}", text.as_ref()),
        };
        self.print(&[line]);
    }

    /// A block of lines (a listing), indented.
    pub fn block(&self, lines: &[String]) {
        let lines: Vec<String> = lines.iter().map(|l| format!("    {l}")).collect();
        self.print(&lines);
    }

    /// Shows the traffic status: in live mode `table` replaces the table at the bottom; in plain
    /// mode `summary` is printed as one line.
    pub fn status(&self, table: Vec<String>, summary: String) {
        match self.output {
            Output::Live => self.with_screen(|screen, buf| {
                erase(screen, buf);
                screen.table = table;
                draw(screen, buf);
            }),
            Output::Plain | Output::Captured => self.print(&[format!("    {summary}")]),
            Output::Quiet => {}
        }
    }

    /// Removes the live table (until the next [`status`](Self::status)).
    pub fn clear_status(&self) {
        let live = self.output == Output::Live;
        self.with_screen(|screen, buf| {
            if live {
                erase(screen, buf);
            }
            screen.table.clear();
        });
    }
}

fn erase(screen: &mut Screen, buf: &mut Vec<u8>) {
    if screen.drawn > 0 {
        // Up `drawn` lines to column 1, then clear to the end of the screen.
        buf.extend_from_slice(format!("\x1b[{}F\x1b[J", screen.drawn).as_bytes());
        screen.drawn = 0;
    }
}

fn draw(screen: &mut Screen, buf: &mut Vec<u8>) {
    // A wrapped line would take two rows and throw off the redraw: cut lines to the width.
    let width = terminal_width().saturating_sub(1).max(20);
    for l in &screen.table {
        let line: String = l.chars().take(width).collect();
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    screen.drawn = screen.table.len();
}

/// Columns of the terminal on stdout (80 when unknown).
fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the pointer we pass, which is valid.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}
