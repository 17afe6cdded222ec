//! [`reseed`]: what makes a restored clone its own (host entropy, clock, machine id).

use std::io;
use std::time::Duration;

use pyro_proto::Session;
use pyro_proto::api::{self, ReseedResult};

use crate::error::CoreError;

use super::RESEED_ENTROPY_BYTES;

/// Makes a restored guest its own before anything runs in it: [`RESEED_ENTROPY_BYTES`] of
/// host entropy (credited, then an immediate CRNG reseed), the host's clock, and a new
/// machine id (see [`api::Request::Reseed`]).
///
/// # Errors
///
/// When the host has no entropy to give or the agent refuses; the caller must then not use
/// the guest.
pub async fn reseed(session: &Session) -> crate::Result<ReseedResult> {
    reseed_with(session, None).await
}

/// [`reseed`], and for a networked clone its own card: `nic`'s MAC and address replace the
/// template's (the agent sets the MAC, replaces the address and the default route, flushes
/// the neighbour cache and rewrites `resolv.conf`), so no two clones share either.
pub async fn reseed_with(
    session: &Session,
    nic: Option<&crate::backend::GuestNic>,
) -> crate::Result<ReseedResult> {
    let mut entropy = [0u8; RESEED_ENTROPY_BYTES];
    fill_random(&mut entropy)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut reseed = api::Reseed::new(&entropy, nanos);
    if let Some(nic) = nic {
        let Some(c) = nic.config else {
            return Err(CoreError::Network {
                reason: "a restored clone needs an address of its own".into(),
            });
        };
        reseed.network = Some(api::GuestNetwork {
            mac: api::MacAddr(nic.mac),
            address: c.address,
            prefix: c.prefix,
            gateway: c.gateway,
            dns: None,
        });
    }
    let req = api::Request::Reseed(reseed);
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        api::call::<ReseedResult>(session, &req),
    )
    .await
    .map_err(|_| CoreError::AgentTimeout { seconds: 30 })??;
    Ok(res)
}

/// Fills `buf` from the kernel's `getrandom`.
pub(super) fn fill_random(buf: &mut [u8]) -> crate::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the valid buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CoreError::io("read", "getrandom", e));
        }
        filled += n as usize;
    }
    Ok(())
}
