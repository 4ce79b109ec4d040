//! nginx as a peer in `tandem bench overhead`: the usual reference for what one reverse-proxy
//! hop costs, run with one worker process in front of the same mock upstream, pooling its
//! upstream connections as Tandem does.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running nginx, stopped when dropped.
pub(super) struct Nginx {
    child: Child,
    addr: SocketAddr,
    /// Holds the config, logs and temp paths; removed on drop, after the process is gone.
    dir: tempfile::TempDir,
}

impl Nginx {
    /// The binary to run: `explicit` if given, else `nginx` on `PATH`, else `/usr/sbin/nginx`
    /// (Debian's place, often missing from a user's `PATH`). None when there is none.
    pub(super) fn find(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(path) = explicit {
            return Some(path.to_path_buf());
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("nginx"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain([PathBuf::from("/usr/sbin/nginx")])
            .find(|candidate| candidate.is_file())
    }

    /// Starts `binary` with one worker proxying every path to `upstream` over pooled
    /// keep-alive HTTP/1.1 connections, and waits until it accepts connections.
    pub(super) fn start(binary: &Path, upstream: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-bench-nginx")
            .tempdir()?;
        // nginx takes a port, not a listener: ask the kernel for a free one and hand it over.
        let addr = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.local_addr()?;
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, config_text(binary, dir.path(), addr, upstream))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config)
            // The early error log, before the config is read, defaults to a system path.
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Self { child, addr, dir };
        nginx.wait_until_ready()?;
        Ok(nginx)
    }

    /// Ready once the pid file names this child, which nginx writes after binding its
    /// listener, and the port accepts: a port taken by another process in the meantime fails
    /// the start rather than being measured in nginx's place.
    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid_file = self.dir.path().join("nginx.pid");
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("nginx exited with {status}: {}", self.error_log());
            }
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if pid.trim() == self.child.id().to_string() && TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("nginx did not listen within 10 s: {}", self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Where it listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pids of the master's workers; empty where the kernel does not list children.
    fn workers(&self) -> Vec<u32> {
        let master = self.child.id();
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    /// CPU time used so far by the master process and its workers (the master alone where the
    /// kernel does not list a process's children).
    pub(super) fn cpu(&self) -> Duration {
        let pids = std::iter::once(self.child.id()).chain(self.workers());
        let ticks = pids
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| super::cpu::stat_cpu_ticks(&stat).map(|(_, ticks)| ticks))
            .sum();
        super::cpu::ticks_to_duration(ticks)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // Already gone and reaped: its pid may name another process by now.
        }
        // SIGTERM lets the master stop its workers; killing only the master would orphan them.
        // SAFETY: plain syscall on the pid of a child that is still running and not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            for worker in self.workers() {
                // SAFETY: plain syscall; the master is alive and unreaped, so its listed
                // children are still its workers.
                unsafe {
                    libc::kill(worker as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One worker, no access log, the gateway's accept queue, keep-alive both ways with no request
/// cap, and every temp path in `dir` so nothing needs root.
fn config_text(binary: &Path, dir: &Path, addr: SocketAddr, upstream: SocketAddr) -> String {
    let dir = dir.display();
    // Temp paths of modules the build lacks are unknown directives, so ask the build.
    let build = Command::new(binary)
        .arg("-V")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
        .unwrap_or_default();
    let mut temp_paths =
        format!("client_body_temp_path {dir}/body;\n    proxy_temp_path {dir}/proxy;\n");
    for module in ["fastcgi", "uwsgi", "scgi"] {
        if !build.contains(&format!("without-http_{module}_module")) {
            temp_paths.push_str(&format!("    {module}_temp_path {dir}/{module};\n"));
        }
    }
    let backlog = tandem_gateway::server::LISTEN_BACKLOG;
    format!(
        "worker_processes 1;\n\
         worker_rlimit_nofile 65536;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log error;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n    \
             access_log off;\n    \
             {temp_paths}    \
             keepalive_requests 1000000000;\n    \
             upstream mock {{\n        \
                 server {upstream};\n        \
                 keepalive 4096;\n        \
                 keepalive_requests 1000000000;\n    \
             }}\n    \
             server {{\n        \
                 listen {addr} backlog={backlog};\n        \
                 location / {{\n            \
                     proxy_pass http://mock;\n            \
                     proxy_http_version 1.1;\n            \
                     proxy_set_header Connection \"\";\n        \
                 }}\n    \
             }}\n\
         }}\n"
    )
}
