//! Objects named by URL — `s3://`, `gs://`, `az://` and `file://` — read through the
//! `object_store` crate, the clouds' builders taking their usual credential chains from the
//! environment. Task inputs read whole objects within a bound; bundle artifacts stream to a
//! file.

use std::path::Path;

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{location:?} is not a URL")]
    NotAUrl { location: String },
    #[error("{location:?}: objects are read from s3, gs, az and file URLs")]
    Scheme { location: String },
    #[error("reading {location:?}")]
    Read {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// True when `scheme` names a store this module reads.
pub fn is_object_scheme(scheme: &str) -> bool {
    matches!(scheme, "s3" | "gs" | "az" | "file")
}

/// The store and the object's path a `s3://`, `gs://`, `az://` or `file://` URL names.
pub fn object_store_for(
    url: &Url,
) -> Result<(Box<dyn ObjectStore>, object_store::path::Path), object_store::Error> {
    use object_store::{
        aws::AmazonS3Builder, azure::MicrosoftAzureBuilder, gcp::GoogleCloudStorageBuilder,
        local::LocalFileSystem, path::Path,
    };
    let store: Box<dyn ObjectStore> = match url.scheme() {
        "s3" => Box::new(AmazonS3Builder::from_env().with_url(url.as_str()).build()?),
        "gs" => Box::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        "az" => Box::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()?,
        ),
        _ => Box::new(LocalFileSystem::new()),
    };
    Ok((store, Path::from_url_path(url.path())?))
}

/// Streams the object at `location` into the file `dest` (its directory made as needed),
/// written beside it first and renamed, so a reader never sees half an object. Its size.
pub async fn fetch_to_file(location: &str, dest: &Path) -> Result<u64, Error> {
    let url = Url::parse(location).map_err(|_| Error::NotAUrl {
        location: location.into(),
    })?;
    if !is_object_scheme(url.scheme()) {
        return Err(Error::Scheme {
            location: location.into(),
        });
    }
    let read = |source| Error::Read {
        location: location.into(),
        source,
    };
    let (store, path) = object_store_for(&url).map_err(read)?;
    let found = store.get(&path).await.map_err(read)?;
    let partial = dest.with_extension("partial");
    let write = |source| Error::Write {
        path: partial.display().to_string(),
        source,
    };
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(write)?;
    }
    let mut file = tokio::fs::File::create(&partial).await.map_err(write)?;
    let mut chunks = found.into_stream();
    let mut size = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(read)?;
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(write)?;
    }
    file.flush().await.map_err(write)?;
    drop(file);
    tokio::fs::rename(&partial, dest).await.map_err(write)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_url_streams_into_a_new_file_and_other_schemes_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("in.zip");
        std::fs::write(&source, vec![7u8; 300_000]).expect("write");
        let url = Url::from_file_path(&source).expect("url").to_string();
        let dest = dir.path().join("out/bundle");
        assert_eq!(fetch_to_file(&url, &dest).await.expect("fetched"), 300_000);
        assert_eq!(std::fs::read(&dest).expect("read").len(), 300_000);

        let missing = format!("{url}.gone");
        assert!(matches!(
            fetch_to_file(&missing, &dest).await,
            Err(Error::Read { .. })
        ));
        assert!(matches!(
            fetch_to_file("https://example.com/b.zip", &dest).await,
            Err(Error::Scheme { .. })
        ));
        assert!(matches!(
            fetch_to_file("models/b.zip", &dest).await,
            Err(Error::NotAUrl { .. })
        ));
    }

    #[test]
    fn cloud_locations_name_their_store_and_object() {
        // Credentials come from the environment when the object is read; building the store
        // checks only the URL.
        let _ = rustls::crypto::ring::default_provider().install_default();
        for url in ["s3://bucket/dir/input.json", "gs://bucket/dir/input.json"] {
            let parsed = Url::parse(url).expect("url");
            let (_, path) = object_store_for(&parsed).expect(url);
            assert_eq!(path.as_ref(), "dir/input.json", "{url}");
        }
    }
}
