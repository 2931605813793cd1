//! Opening the stores a broker is configured with: the metadata store (embedded on disk, in
//! memory, or etcd) and the object store (a URL), which is claimed for the cluster and checked
//! at start so a misconfiguration fails in seconds, with its cause.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use silt_metadata::{Clock, EmbeddedStore, MetaStore};
use silt_storage::object::{S3Options, open_object_store};
use tracing::info;

use crate::settings::Settings;

/// The metadata store `settings` name.
pub async fn open_metadata(
    s: &Settings,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn MetaStore>> {
    Ok(match s.metadata.as_str() {
        "memory" => EmbeddedStore::open_in_memory(clock.clone())?,
        #[cfg(feature = "etcd")]
        url if url.starts_with("etcd://") => {
            let mut options = silt_metadata::EtcdOptions::from_url(url)?;
            options.user = s.etcd_user.clone().zip(s.etcd_password.clone());
            if let Some(ca) = &s.etcd_ca {
                let read = |p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                };
                let client_pem = match (&s.etcd_cert, &s.etcd_key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                options.tls = Some(silt_metadata::EtcdTls {
                    ca_pem: read(ca)?,
                    client_pem,
                });
            }
            Arc::new(silt_metadata::EtcdStore::connect(&options).await?)
        }
        _ => EmbeddedStore::open(&s.data_dir.join("metadata.redb"), clock.clone())?,
    })
}

fn s3_options(s: &Settings) -> S3Options {
    S3Options {
        endpoint: s.s3_endpoint.clone(),
        region: s.s3_region.clone(),
        allow_http: s.s3_allow_http,
        virtual_hosted_style: s.s3_virtual_hosted_style,
        credentials: None,
        retry_for: None,
        sign_payload: s.s3_sign_payload,
    }
}

/// The object store `settings` name (creating its bucket if asked), a second handle on it that
/// retries only briefly (for start-up checks: a wrong endpoint or a stopped server is reported
/// in seconds, with its cause), and its URL.
pub async fn open_objects(
    s: &Settings,
) -> anyhow::Result<(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>, String)> {
    let url = s.object_store_url().map_err(anyhow::Error::msg)?;
    let s3 = s3_options(s);
    if s.create_bucket && silt_storage::object::create_bucket_if_missing(&url, &s3).await? {
        info!(object_store = %url, "created the missing bucket");
    }
    let store = open_object_store(&url, &s3)?;
    let probe = open_object_store(
        &url,
        &S3Options {
            retry_for: Some(Duration::from_secs(5)),
            ..s3
        },
    )?;
    Ok((store, probe, url))
}

/// Claims the object store for the cluster (see `claim_for_cluster`).
pub async fn claim(
    probe: &dyn ObjectStore,
    cluster: &str,
    url: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    silt_storage::object::claim_for_cluster(probe, cluster, now_ms)
        .await
        .map_err(|e| anyhow::anyhow!("object store {url}: {e}"))
}
