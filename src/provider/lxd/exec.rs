//! Commands in a machine through LXD's exec websockets: stdin, stdout and stderr on
//! one websocket each (interactive: one for the terminal), the exit code from the
//! finished operation.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use super::client::{Client, Stream};
use super::Error;

/// What to run, already resolved against the machine (environment, directory).
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// uid and gid the command runs as.
    pub user: (u32, u32),
    pub tty: bool,
}

/// Runs `command` in instance `path` (`/1.0/instances/NAME`); `stdin` feeds it (a
/// file, or the caller's stdin). Returns the command's exit code.
pub fn run(client: &Client, path: &str, command: &Command, stdin: Box<dyn Read + Send>) -> Result<i32, Error> {
    let env: serde_json::Map<String, Value> = command.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let (width, height) = if command.tty { crate::terminal::size() } else { (0, 0) };
    let body = json!({
        "command": command.argv,
        "environment": env,
        "cwd": command.cwd,
        "user": command.user.0,
        "group": command.user.1,
        "interactive": command.tty,
        "wait-for-websocket": true,
        "record-output": false,
        "width": width,
        "height": height,
    });
    let doing = "running a command in the machine";
    let op = client.start(&format!("{path}/exec"), &body, doing)?;
    let secret = |fd: &str| -> Result<String, Error> {
        op.metadata["fds"][fd].as_str().map(str::to_string).ok_or_else(|| Error::BadAnswer {
            server: client.server.clone(),
            doing: doing.into(),
            problem: format!("no websocket secret for fd {fd}"),
        })
    };
    let control = client.websocket(&op.id, &secret("control")?, doing)?;
    let code = if command.tty {
        let terminal = client.websocket(&op.id, &secret("0")?, doing)?;
        interactive(terminal, stdin, client, doing)?;
        finish(client, &op.id, doing)?
    } else {
        let input = client.websocket(&op.id, &secret("0")?, doing)?;
        let output = client.websocket(&op.id, &secret("1")?, doing)?;
        let errors = client.websocket(&op.id, &secret("2")?, doing)?;
        // The command's stdin is fed by a thread of its own: a caller's stdin that never
        // ends must not hold up the exit code.
        std::thread::spawn(move || feed(input, stdin));
        let out = std::thread::spawn(move || drain(output, std::io::stdout()));
        let err = std::thread::spawn(move || drain(errors, std::io::stderr()));
        let _ = out.join();
        let _ = err.join();
        finish(client, &op.id, doing)?
    };
    drop(control);
    Ok(code)
}

/// The exit code of the finished exec operation. LXD fails the operation for a
/// command that did not start; envy answers as a shell does (127, 126).
fn finish(client: &Client, op: &str, doing: &str) -> Result<i32, Error> {
    let meta = match client.wait(op, doing) {
        Ok(meta) => meta,
        Err(Error::Failed { message, .. }) if message == "Command not found" => return Ok(crate::error::code::COMMAND_NOT_FOUND),
        Err(Error::Failed { message, .. }) if message.contains("ermission denied") => {
            return Ok(crate::error::code::COMMAND_NOT_EXECUTABLE)
        }
        Err(e) => return Err(e),
    };
    meta["return"].as_i64().and_then(|c| i32::try_from(c).ok()).ok_or_else(|| Error::BadAnswer {
        server: client.server.clone(),
        doing: doing.into(),
        problem: "the finished command has no exit code".into(),
    })
}

/// Copies `source` into the websocket, then closes it: the command sees end of input.
fn feed(mut socket: WebSocket<Stream>, mut source: Box<dyn Read + Send>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if socket.send(Message::binary(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = socket.close(None);
    // The daemon answers the close; read until it does so the frame is not lost.
    while socket.read().is_ok() {}
}

/// Copies what the command writes from the websocket to `sink` until the daemon closes it.
fn drain(mut socket: WebSocket<Stream>, mut sink: impl Write) {
    while let Ok(message) = socket.read() {
        match message {
            Message::Binary(data) => {
                let _ = sink.write_all(&data).and_then(|_| sink.flush());
            }
            Message::Text(text) => {
                let _ = sink.write_all(text.as_bytes()).and_then(|_| sink.flush());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

/// A terminal session: the caller's terminal in raw mode, keystrokes to the machine,
/// its output to the caller, on one websocket read in short steps.
fn interactive(mut socket: WebSocket<Stream>, mut stdin: Box<dyn Read + Send>, client: &Client, doing: &str) -> Result<(), Error> {
    let _raw = crate::terminal::RawTerminal::enter();
    let (keys, typed) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || keys.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    socket.get_ref().set_read_timeout(Some(Duration::from_millis(20))).map_err(|e| Error::Unreachable {
        server: client.server.clone(),
        doing: doing.into(),
        cause: e.to_string(),
    })?;
    let mut stdout = std::io::stdout();
    loop {
        while let Ok(bytes) = typed.try_recv() {
            if socket.send(Message::binary(bytes)).is_err() {
                return Ok(());
            }
        }
        match socket.read() {
            Ok(Message::Binary(data)) => {
                let _ = stdout.write_all(&data).and_then(|_| stdout.flush());
            }
            Ok(Message::Text(text)) => {
                let _ = stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush());
            }
            Ok(Message::Close(_)) => return Ok(()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Ok(()),
        }
    }
}
