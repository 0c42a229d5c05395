//! Reading a gateway's metrics listener: one plain HTTP GET and a sample looked up by name.
//! For load generators and tests; the listener itself is the gateway's (`metrics::serve`).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches `path` from an HTTP server on `addr` (a gateway's metrics listener): the whole
/// response, status line and headers included.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The value of the sample `name` (labels included, e.g. `courier_connections{shard="0"}`) in a
/// Prometheus text exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_their_whole_name() {
        let text = "# HELP x\ncourier_connections{shard=\"0\"} 3\ncourier_connections_total 9\n";
        assert_eq!(sample(text, "courier_connections{shard=\"0\"}"), Some(3.0));
        assert_eq!(sample(text, "courier_connections_total"), Some(9.0));
        assert_eq!(sample(text, "courier_connections"), None);
    }
}
