//! Outbound calls to URLs a caller supplied (Web Push endpoints, status callbacks): they
//! follow no redirects and connect only to public addresses, so a tenant cannot make Herald
//! call into its own network (SSRF).
//!
//! The address is checked where it is used: the client's DNS resolver drops every non-public
//! address from each answer before reqwest connects, so a name that answers public to one
//! lookup and private to the next (DNS rebinding, a 0-TTL record) gains nothing, and a name
//! with no public address is refused without any connection being tried (no port probing
//! through callback timelines). Literal IP hosts never reach a resolver: they are checked by
//! `domain::recipient::check_endpoint`, at request time and again before each call.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::recipient::is_private_ip;

/// Why a call was not made: the host has no public address.
#[derive(Debug, thiserror::Error)]
#[error("refused: {host} resolves only to private, loopback or reserved addresses")]
pub struct Refused {
    pub host: String,
}

type Lookup = dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> + Send + Sync;

/// A resolver that keeps only public addresses.
pub struct PublicOnly {
    lookup: Arc<Lookup>,
}

impl PublicOnly {
    /// The system's resolver (getaddrinfo, as reqwest's default), filtered.
    pub fn system() -> PublicOnly {
        PublicOnly::with_lookup(|host| {
            Box::pin(async move { Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect()) })
        })
    }

    /// Another lookup, filtered (tests answer with addresses of their choosing).
    pub fn with_lookup(
        f: impl Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> + Send + Sync + 'static,
    ) -> PublicOnly {
        PublicOnly { lookup: Arc::new(f) }
    }
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookup = (self.lookup)(host.clone());
        Box::pin(async move {
            let public = public_only(lookup.await?);
            if public.is_empty() {
                return Err(Box::new(Refused { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(public.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

fn public_only(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    addrs.into_iter().filter(|ip| !is_private_ip(*ip)).collect()
}

/// The client for caller-supplied URLs: no redirects, and with `allow_private` off (the
/// default outside tests and private deployments) only public addresses.
pub fn client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    client_with(if allow_private { None } else { Some(PublicOnly::system()) })
}

/// `client` with a resolver of the caller's (`None`: the system's, unfiltered).
pub fn client_with(resolver: Option<PublicOnly>) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none());
    match resolver {
        Some(r) => builder.dns_resolver(Arc::new(r)).build(),
        None => builder.build(),
    }
}

/// The refusal behind a failed call, if that is what it was.
pub fn refusal(e: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn only_public_addresses_are_kept() {
        let ips: Vec<IpAddr> =
            ["10.0.0.5", "93.184.215.14", "127.0.0.1", "2606:4700::1111", "::1"].map(|s| s.parse().unwrap()).into();
        assert_eq!(public_only(ips), ["93.184.215.14".parse::<IpAddr>().unwrap(), "2606:4700::1111".parse().unwrap()]);
    }

    /// A rebinding name: the first lookup (a guard's) answers public, every later one (the
    /// connection's) answers loopback, where a listener waits. The listener is never reached.
    #[tokio::test]
    async fn a_name_rebound_to_loopback_is_refused_without_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let lookups = Arc::new(AtomicUsize::new(0));
        let seen = lookups.clone();
        let resolver = PublicOnly::with_lookup(move |_| {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            Box::pin(async move {
                Ok(vec![if first { "93.184.215.14".parse().unwrap() } else { "127.0.0.1".parse().unwrap() }])
            })
        });
        // The first answer is used up, as a check before the call would use it.
        let _ = (resolver.lookup)("rebind.test".into()).await;
        let client = client_with(Some(resolver)).unwrap();
        let err = client.get(format!("http://rebind.test:{port}/")).send().await.expect_err("refused");
        let refused = refusal(&err).expect("a refusal");
        assert_eq!(refused.host, "rebind.test");
        assert!(refused.to_string().starts_with("refused: "));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection was made");
    }

    /// With private networks allowed (tests, private deployments) the same call goes through.
    #[tokio::test]
    async fn allowing_private_networks_uses_the_plain_resolver() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let r = client(true).unwrap().get(format!("http://localhost:{port}/")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let err = client(false).unwrap().get(format!("http://localhost:{port}/")).send().await.expect_err("refused");
        assert!(refusal(&err).is_some(), "{err:?}");
    }
}
