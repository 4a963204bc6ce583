//! A small SMTP server on 127.0.0.1 that records what it accepts. `plan` holds replies to give
//! to the end of DATA (e.g. "451 4.3.0 try again later"); when empty, DATA gets 250.
//! `hang_next_data` makes the next DATA never answer, like a provider that stalls mid-send.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    plan: VecDeque<String>,
    data_attempts: usize,
    hang_next: bool,
    hanging: usize,
}

#[derive(Clone)]
pub struct FakeSmtp {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeSmtp {
    pub async fn start() -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = session(sock, st).await;
                });
            }
        });
        FakeSmtp { port, state }
    }

    pub fn plan(&self, replies: &[&str]) {
        self.state.lock().expect("lock").plan = replies.iter().map(std::string::ToString::to_string).collect();
    }

    pub fn plan_left(&self) -> usize {
        self.state.lock().expect("lock").plan.len()
    }

    pub fn hang_next_data(&self) {
        self.state.lock().expect("lock").hang_next = true;
    }

    pub fn hanging(&self) -> usize {
        self.state.lock().expect("lock").hanging
    }

    /// DATA transactions seen (accepted or not).
    pub fn attempts(&self) -> usize {
        self.state.lock().expect("lock").data_attempts
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().expect("lock").messages.clone()
    }

    pub fn to(&self, addr: &str) -> Vec<Received> {
        self.messages().into_iter().filter(|m| m.to.iter().any(|t| t == addr)).collect()
    }
}

async fn session(sock: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r);
    w.write_all(b"220 fake-smtp ready\r\n").await?;
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            w.write_all(b"250-fake-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n").await?;
        } else if upper.starts_with("HELO") {
            w.write_all(b"250 fake-smtp\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().trim_matches(['<', '>']).to_owned();
            rcpts.clear();
            w.write_all(b"250 2.1.0 ok\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(cmd[8..].trim().trim_matches(['<', '>']).to_owned());
            w.write_all(b"250 2.1.5 ok\r\n").await?;
        } else if upper == "DATA" {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if lines.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                data.push_str(&l);
            }
            let reply = {
                let mut st = state.lock().expect("lock");
                st.data_attempts += 1;
                if st.hang_next {
                    st.hang_next = false;
                    st.hanging += 1;
                    None
                } else {
                    let reply = st.plan.pop_front().unwrap_or_else(|| "250 2.0.0 queued".into());
                    if reply.starts_with("250") {
                        st.messages.push(Received { from: from.clone(), to: rcpts.clone(), data });
                    }
                    Some(reply)
                }
            };
            match reply {
                Some(r) => w.write_all(format!("{r}\r\n").as_bytes()).await?,
                None => {
                    // Stall until the client goes away.
                    let mut sink = String::new();
                    while lines.read_line(&mut sink).await? > 0 {}
                    return Ok(());
                }
            }
        } else if upper == "RSET" || upper == "NOOP" {
            w.write_all(b"250 ok\r\n").await?;
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.2 not implemented\r\n").await?;
        }
    }
}
