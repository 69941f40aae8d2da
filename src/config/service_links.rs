//! Kubernetes service-link variables: the kubelet puts, for every Service
//! in a pod's namespace (unless the pod sets `enableServiceLinks: false`),
//! `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<PORT NAME>]`, `<NAME>_PORT`
//! and `<NAME>_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]` into the environment of
//! every container. A Service named `tollgate` or `tollgate-control` thus
//! puts `TOLLGATE_PORT=tcp://10.0.0.7:8787` into every pod, which looks like
//! a config variable to the loader.
//!
//! A variable is taken for a service link only when both its name and its
//! value have the kubelet's shape (and, in the loader, when it is not a real
//! key), so a misspelt key (`TOLLGATE_LISTN=…`) is still reported.

use std::net::IpAddr;

/// The protocols a Service port can have, as the kubelet writes them in
/// variable names.
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// Whether `name=value` has the shape of a Kubernetes service-link variable.
pub(super) fn is_service_link(name: &str, value: &str) -> bool {
    // `<NAME>_SERVICE_HOST=10.0.0.7`
    if let Some(service) = name.strip_suffix("_SERVICE_HOST") {
        return !service.is_empty() && is_ip(value);
    }
    // `<NAME>_SERVICE_PORT=8787` and `<NAME>_SERVICE_PORT_HTTP=8787`.
    if let Some((service, port_name)) = name.rsplit_once("_SERVICE_PORT") {
        let named = port_name.is_empty() || port_name.starts_with('_');
        return !service.is_empty() && named && is_port(value);
    }
    // `<NAME>_PORT=tcp://10.0.0.7:8787`
    if let Some(service) = name.strip_suffix("_PORT") {
        if !service.is_empty() && is_link_url(value) {
            return true;
        }
    }
    docker_link(name, value)
}

/// `<NAME>_PORT_8787_TCP=tcp://…`, `…_TCP_PROTO=tcp`, `…_TCP_PORT=8787`,
/// `…_TCP_ADDR=10.0.0.7`.
fn docker_link(name: &str, value: &str) -> bool {
    let (head, field) = match name.rsplit_once('_') {
        Some((head, field @ ("PROTO" | "PORT" | "ADDR"))) => (head, Some(field)),
        _ => (name, None),
    };
    let Some((head, proto)) = head.rsplit_once('_') else {
        return false;
    };
    if !PROTOCOLS.contains(&proto) {
        return false;
    }
    let Some((head, number)) = head.rsplit_once('_') else {
        return false;
    };
    let Some(service) = head.strip_suffix("_PORT") else {
        return false;
    };
    if service.is_empty() || !is_port(number) {
        return false;
    }
    match field {
        None => is_link_url(value),
        Some("PROTO") => value.eq_ignore_ascii_case(proto),
        Some("PORT") => is_port(value),
        Some(_) => is_ip(value),
    }
}

fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

fn is_port(value: &str) -> bool {
    value.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `tcp://10.0.0.7:8787` (or udp, sctp; `[v6]:port`).
fn is_link_url(value: &str) -> bool {
    let Some((proto, addr)) = value.split_once("://") else {
        return false;
    };
    PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(proto))
        && addr.parse::<std::net::SocketAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_service_link;

    /// What the kubelet sets for a Service `tollgate-control` with one
    /// port named `http` (8790) at 10.96.0.12, and for `tollgate` on IPv6.
    const LINKS: &[(&str, &str)] = &[
        ("TOLLGATE_CONTROL_SERVICE_HOST", "10.96.0.12"),
        ("TOLLGATE_CONTROL_SERVICE_PORT", "8790"),
        ("TOLLGATE_CONTROL_SERVICE_PORT_HTTP", "8790"),
        ("TOLLGATE_CONTROL_PORT", "tcp://10.96.0.12:8790"),
        ("TOLLGATE_CONTROL_PORT_8790_TCP", "tcp://10.96.0.12:8790"),
        ("TOLLGATE_CONTROL_PORT_8790_TCP_PROTO", "tcp"),
        ("TOLLGATE_CONTROL_PORT_8790_TCP_PORT", "8790"),
        ("TOLLGATE_CONTROL_PORT_8790_TCP_ADDR", "10.96.0.12"),
        ("TOLLGATE_SERVICE_HOST", "fd00::12"),
        ("TOLLGATE_PORT", "tcp://[fd00::12]:8787"),
        ("TOLLGATE_PORT_53_UDP", "udp://[fd00::12]:53"),
        ("TOLLGATE_PORT_53_UDP_PROTO", "udp"),
    ];

    #[test]
    fn the_kubelets_variables_are_service_links() {
        for (name, value) in LINKS {
            assert!(is_service_link(name, value), "{name}={value}");
        }
    }

    #[test]
    fn a_name_or_value_of_another_shape_is_not() {
        for (name, value) in [
            ("TOLLGATE_LISTN", "127.0.0.1:8787"),
            ("TOLLGATE_LISTEN", "127.0.0.1:8787"),
            // The right names with values the kubelet never writes.
            ("TOLLGATE_PORT", "8787"),
            ("TOLLGATE_SERVICE_HOST", "control.example"),
            ("TOLLGATE_SERVICE_PORT", "http"),
            ("TOLLGATE_PORT_8787_TCP_PROTO", "udp"),
            ("TOLLGATE_PORT_8787_HTTP", "tcp://10.0.0.1:8787"),
            ("TOLLGATE_PORT_X_TCP", "tcp://10.0.0.1:8787"),
            ("TOLLGATE_PORT", "http://10.0.0.1:8787"),
            // No service name in front.
            ("_SERVICE_HOST", "10.0.0.1"),
            ("_PORT", "tcp://10.0.0.1:1"),
            ("PORT_1_TCP", "tcp://10.0.0.1:1"),
        ] {
            assert!(!is_service_link(name, value), "{name}={value}");
        }
    }
}
