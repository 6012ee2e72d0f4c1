//! A terminal for a command envy starts in a container (`envy exec -t`, `envy ssh`): the
//! pty comes from the container's own devpts, as runc's does, so the command's
//! `/dev/pts/N` exists in its root. The command's process opens it, makes it its
//! controlling terminal and stdio, and hands the master to envy over a socket; envy
//! relays it to the caller's terminal in raw mode, with the window size kept in step.

use std::io::{IoSlice, Write as _};
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// In the command's process, inside the container's mount namespace and before it
/// takes the command's user: a pty of the container's devpts as its controlling
/// terminal and stdio, `size` (columns, rows), owned by `owner`; the master goes to
/// envy over `socket`. Returns why not, as the report says it.
pub fn attach_in_container(socket: RawFd, size: (u16, u16), owner: u32) -> std::result::Result<(), String> {
    let fail = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls on descriptors this process opens here.
    unsafe {
        let master = libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(fail("cannot open /dev/ptmx in the machine"));
        }
        let master = OwnedFd::from_raw_fd(master);
        // Whatever a guest put at /dev/ptmx, only a pty master unlocks and names a peer.
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(fail("/dev/ptmx in the machine is not a pty multiplexer"));
        }
        let slave = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            return Err(fail("/dev/ptmx in the machine gives no pty"));
        }
        let slave = OwnedFd::from_raw_fd(slave);
        let window = libc::winsize { ws_col: size.0, ws_row: size.1, ws_xpixel: 0, ws_ypixel: 0 };
        libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &window);
        if owner != 0 && libc::fchown(slave.as_raw_fd(), owner, u32::MAX) != 0 {
            return Err(fail("cannot give the terminal to the command's user"));
        }
        if libc::setsid() < 0 || libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
            return Err(fail("cannot make the pty the command's terminal"));
        }
        for fd in 0..3 {
            if libc::dup2(slave.as_raw_fd(), fd) < 0 {
                return Err(fail("cannot make the pty the command's stdio"));
            }
        }
        let fds = [master.as_raw_fd()];
        let sent = sendmsg::<()>(socket, &[IoSlice::new(b"m")], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None);
        libc::close(socket);
        sent.map_err(|e| format!("cannot hand the terminal to envy: {e}"))?;
    }
    Ok(())
}

/// The pty master the command's process sent, or `None` when it ended without one
/// (then its report says why).
pub fn receive(socket: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("cannot receive the terminal of the command in the container")?;
    for control in message.cmsgs().context("cannot read the terminal's message")? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            // SAFETY: the kernel installed these descriptors in this process for us.
            let mut owned = fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
            return Ok(owned.next());
        }
    }
    Ok(None)
}

static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_resize(_: libc::c_int) {
    RESIZED.store(true, Ordering::SeqCst);
}

/// Passes the caller's keys to `master` and its output to the caller until the
/// command and everything holding its terminal are gone.
pub fn relay(master: OwnedFd) -> Result<()> {
    let _raw = crate::terminal::RawTerminal::enter();
    // SAFETY: the handler only stores to an atomic; no SA_RESTART, so poll wakes for it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = note_resize as *const () as libc::sighandler_t;
        libc::sigaction(libc::SIGWINCH, &action, std::ptr::null_mut());
    }
    let relayed = copy_both_ways(&master);
    // SAFETY: back to the default disposition.
    unsafe { libc::signal(libc::SIGWINCH, libc::SIG_DFL) };
    relayed
}

fn copy_both_ways(master: &OwnedFd) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut keys_open = true;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if RESIZED.swap(false, Ordering::SeqCst) {
            let (columns, rows) = crate::terminal::size();
            let window = libc::winsize { ws_col: columns, ws_row: rows, ws_xpixel: 0, ws_ypixel: 0 };
            // SAFETY: TIOCSWINSZ reads one winsize from the struct we pass.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &window) };
        }
        // SAFETY: stdin outlives this loop.
        let stdin_fd = unsafe { BorrowedFd::borrow_raw(stdin.as_raw_fd()) };
        let mut fds = vec![PollFd::new(std::os::fd::AsFd::as_fd(master), PollFlags::POLLIN)];
        if keys_open {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot wait for the terminal of the command in the container"),
            Ok(_) => {}
        }
        let output = fds[0].revents().unwrap_or(PollFlags::empty());
        let keys = fds.get(1).and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        if !output.is_empty() {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                // EIO: the last holder of the terminal's other side is gone.
                Ok(0) | Err(nix::errno::Errno::EIO) => return Ok(()),
                Ok(n) => stdout.write_all(&buf[..n]).and_then(|()| stdout.flush()).context("cannot write the command's output")?,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e).context("cannot read the terminal of the command in the container"),
            }
        }
        if !keys.is_empty() {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => keys_open = false,
                Ok(n) => write_all(master, &buf[..n])?,
            }
        }
    }
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot pass keys to the command in the container"),
        }
    }
    Ok(())
}
