//! W3C Trace Context (`traceparent`): accepted on `POST /v1/notifications`, stored with the
//! notification, and continued by dispatch (a new span id per provider call, the same trace
//! id), so that one trace id ties accept → queue → attempts → receipt together in the logs and
//! in the systems of providers that take the header.

use std::fmt;

/// `00-<trace id>-<parent span id>-<flags>`, lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: String,
    span_id: String,
    flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceParent {
    /// A valid header, else `None`: the W3C rules say to ignore (not refuse) a bad one.
    /// Versions after `00` are read by their first four fields, as the spec asks.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let rest_ok = if version == "00" { parts.next().is_none() } else { true };
        let ok = is_hex(version, 2)
            && version != "ff"
            && rest_ok
            && is_hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && is_hex(span_id, 16)
            && span_id.bytes().any(|b| b != b'0')
            && is_hex(flags, 2);
        ok.then(|| TraceParent { trace_id: trace_id.into(), span_id: span_id.into(), flags: flags.into() })
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The context for a call made within this one: same trace, a new span id.
    pub fn child(&self) -> TraceParent {
        let span: u64 = rand::random::<u64>().max(1);
        TraceParent { trace_id: self.trace_id.clone(), span_id: format!("{span:016x}"), flags: self.flags.clone() }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    #[test]
    fn headers_are_read_as_the_w3c_spec_says() {
        let t = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let child = t.child();
        assert_eq!(child.trace_id(), t.trace_id());
        assert_ne!(child.to_string(), t.to_string());
        assert!(TraceParent::parse(&child.to_string()).is_some());
        // A later version with more fields is read by its first four.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }
}
