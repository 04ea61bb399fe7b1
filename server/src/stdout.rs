//! CLI output. `println!` panics when stdout is a closed pipe (`ringlab bench … |
//! head -1`); the commands print through [`write`] (the [`outln!`](crate::outln) and
//! [`out!`](crate::out) macros) instead: a reader that went away is not an error —
//! nothing is left to tell it — while any other failure to write (a full disk under
//! `> file`) is reported and exits with status 1, so a truncated output never looks
//! like a success.

use std::io::{ErrorKind, Write};

/// Writes `args` to stdout (see the module docs for how errors are handled).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for CLI output, through [`write`].
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::stdout::write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` for CLI output, through [`write`].
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::stdout::write(format_args!($($t)*)) };
}
