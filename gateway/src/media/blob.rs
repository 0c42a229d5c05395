//! Content-addressed blobs in an object store (`object_store`): a local directory by default,
//! anything the crate speaks (S3-compatible storage among them) by configuration. A blob's key is
//! its SHA-256, so the same bytes uploaded twice are stored once.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tokio::io::AsyncReadExt;

use crate::util::hex;

/// Size of the parts a file is uploaded in.
const PART: usize = 8 << 20;

/// The blob store.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.store)
    }
}

impl Blobs {
    /// Blobs in a local directory (created if missing).
    pub fn local(dir: &FsPath) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self::new(Arc::new(LocalFileSystem::new_with_prefix(dir)?)))
    }

    /// Blobs in an S3 bucket (or an S3-compatible service at `endpoint`); credentials and
    /// region from the `AWS_*` environment variables.
    #[cfg(feature = "s3")]
    pub fn s3(bucket: &str, endpoint: Option<&str>) -> anyhow::Result<Self> {
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(e) = endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        Ok(Self::new(Arc::new(b.build()?)))
    }

    /// Without the `s3` feature: an error saying so.
    #[cfg(not(feature = "s3"))]
    pub fn s3(bucket: &str, _endpoint: Option<&str>) -> anyhow::Result<Self> {
        anyhow::bail!(
            "blob store s3://{bucket}: this courier was built without S3 support (cargo feature `s3`)"
        )
    }

    /// Blobs in any object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    fn key(sha256: &[u8; 32]) -> Path {
        Path::from(format!("sha256/{}", hex(sha256)))
    }

    /// Whether the blob is stored.
    pub async fn exists(&self, sha256: &[u8; 32]) -> anyhow::Result<bool> {
        match self.store.head(&Self::key(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `bytes` under their hash unless already there.
    pub async fn put_bytes(&self, sha256: &[u8; 32], bytes: Bytes) -> anyhow::Result<()> {
        if !self.exists(sha256).await? {
            self.store
                .put(&Self::key(sha256), PutPayload::from(bytes))
                .await?;
        }
        Ok(())
    }

    /// Stores the file's contents under their hash unless already there, in parts (never the
    /// whole file in memory).
    pub async fn put_file(&self, sha256: &[u8; 32], file: &FsPath) -> anyhow::Result<()> {
        if self.exists(sha256).await? {
            return Ok(());
        }
        let mut f = tokio::fs::File::open(file).await?;
        let mut upload = self.store.put_multipart(&Self::key(sha256)).await?;
        loop {
            let mut buf = Vec::with_capacity(PART);
            let n = (&mut f).take(PART as u64).read_to_end(&mut buf).await?;
            if n == 0 {
                break;
            }
            if let Err(e) = upload.put_part(PutPayload::from(buf)).await {
                let _ = upload.abort().await;
                return Err(e.into());
            }
        }
        upload.complete().await?;
        Ok(())
    }

    /// Bytes `range` of a blob.
    pub async fn get_range(&self, sha256: &[u8; 32], range: Range<u64>) -> anyhow::Result<Bytes> {
        Ok(self.store.get_range(&Self::key(sha256), range).await?)
    }

    /// Deletes a blob (absent is fine).
    pub async fn delete(&self, sha256: &[u8; 32]) -> anyhow::Result<()> {
        match self.store.delete(&Self::key(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
