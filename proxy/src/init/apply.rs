//! Applying a plan: read the table with `iptables-save`, write the change with one
//! `iptables-restore --noflush` per address family.
//!
//! Commands run with a deadline: `init` runs before the pod's containers start, and a wedged
//! `iptables` (a held xtables lock, say) must fail the pod visibly instead of hanging it.

use std::io::Write;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::plan::{Action, FamilyPlan, TABLE};

/// How long one `iptables-save` or `iptables-restore` may take. Applying a few dozen rules
/// takes milliseconds; a minute only ever passes when something is stuck.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A command `init` ran that did not succeed. Each variant names the command line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{command}` (is iptables installed and on PATH?): {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("talking to `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// Applies `action` for one family and returns the ruleset that was written.
pub fn apply_family(plan: &FamilyPlan, action: Action) -> Result<String, CommandError> {
    let current = run(plan.family.save_command(), &["-t", TABLE], None)?;
    let input = plan.restore_input(action, &String::from_utf8_lossy(&current.stdout));
    run(plan.family.restore_command(), &["--noflush"], Some(&input))?;
    Ok(input)
}

/// Runs `program args…`, feeding `stdin` if given, and fails unless it exits 0 in time.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, CommandError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id();

    // Writing from a thread: a large ruleset can fill the pipe before the child reads it,
    // and the child might exit early on an error without reading at all.
    let writer = match (child.stdin.take(), stdin) {
        (Some(mut pipe), Some(input)) => {
            let input = input.to_owned();
            Some(thread::spawn(move || pipe.write_all(input.as_bytes())))
        }
        _ => None,
    };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // The receiver is gone only after a timeout, when nobody needs the result.
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(result) => result.map_err(|source| CommandError::Io {
            command: command.clone(),
            source,
        })?,
        Err(_) => {
            // The waiting thread has not reaped the child, so `pid` is still ours to kill.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return Err(CommandError::Timeout {
                command,
                timeout: COMMAND_TIMEOUT,
            });
        }
    };
    if !output.status.success() {
        return Err(CommandError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    // A write error after a successful exit means the child did not need all of its input,
    // which `iptables-restore` never does; report it rather than trust a partial ruleset.
    if let Some(writer) = writer {
        match writer.join() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(CommandError::Io { command, source }),
            Err(_) => {
                return Err(CommandError::Io {
                    command,
                    source: std::io::Error::other("stdin writer thread panicked"),
                })
            }
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_and_its_stderr() {
        let err = run("sh", &["-c", "echo nope >&2; exit 3"], None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`sh -c echo nope >&2; exit 3` failed"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("nope"), "{msg}");
    }

    #[test]
    fn stdin_is_fed_and_stdout_captured() {
        let out = run("cat", &[], Some("*nat\nCOMMIT\n")).unwrap();
        assert_eq!(out.stdout, b"*nat\nCOMMIT\n");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run("weft-no-such-iptables", &["-t", "nat"], None).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("weft-no-such-iptables -t nat"));
    }
}
