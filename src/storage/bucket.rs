//! Creating the bucket at start when it is missing.
//!
//! `object_store` has no CreateBucket, so this sends one signed `PUT /{bucket}` with the crate's
//! own SigV4 signer and HTTP client (path-style, as every S3-compatible server accepts). A bucket
//! that already exists is fine; a server that refuses creation (Garage keys without
//! `--create-bucket`) is fine too as long as the bucket answers afterwards.

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpConnector, HttpRequestBody, ReqwestConnector};

use super::{Operation, StorageError};
use crate::config::S3Config;

fn unavailable(bucket: &str, message: impl Into<String>) -> StorageError {
    StorageError::Unavailable {
        operation: Operation::Check,
        key: bucket.to_string(),
        message: message.into(),
    }
}

/// What a CreateBucket sends: nothing in `us-east-1`, else the region as its location
/// constraint, without which AWS's other regions refuse it (`IllegalLocationConstraintException`).
fn create_bucket_body(region: &str) -> HttpRequestBody {
    if region == "us-east-1" {
        return HttpRequestBody::empty();
    }
    format!(
        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
    )
    .into()
}

/// Sends one signed request for the bucket itself; returns its status and body text.
async fn bucket_request(
    config: &S3Config,
    method: &str,
) -> Result<(http::StatusCode, String), StorageError> {
    let bucket = config.bucket.as_str();
    let body = match method {
        "PUT" => create_bucket_body(&config.region),
        _ => HttpRequestBody::empty(),
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{}/{}", config.endpoint_url, bucket))
        .body(body)
        .map_err(|e| unavailable(bucket, format!("cannot build {method} request: {e}")))?;
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        let credential = AwsCredential {
            key_id: id.expose().to_string(),
            secret_key: secret.expose().to_string(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", &config.region)
            .try_authorize(&mut request, None)
            .map_err(|e| unavailable(bucket, format!("cannot sign {method} request: {e}")))?;
    }
    let client = ReqwestConnector::default()
        .connect(&super::backend::client_options(config))
        .map_err(|e| unavailable(bucket, e.to_string()))?;
    let response = client
        .execute(request)
        .await
        .map_err(|e| unavailable(bucket, format!("{method} bucket failed: {e}")))?;
    let status = response.status();
    let body = response.into_body().bytes().await.unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Whether `config.bucket` exists (and is usable), without creating it. An unreachable server is
/// an error.
pub async fn bucket_exists(config: &S3Config) -> Result<bool, StorageError> {
    let (status, _) = bucket_request(config, "HEAD").await?;
    if status.is_success() {
        return Ok(true);
    }
    if status == http::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    usable(config, status, "").await.map(|_| true)
}

/// Creates `config.bucket` unless it exists. Returns whether it was created.
pub async fn ensure_bucket(config: &S3Config) -> Result<bool, StorageError> {
    let bucket = config.bucket.as_str();
    let (status, _) = bucket_request(config, "HEAD").await?;
    if status.is_success() {
        return Ok(false);
    }
    if status != http::StatusCode::NOT_FOUND {
        // 403 and friends: we may not look at the bucket this way; see whether it works anyway.
        return usable(config, status, "").await;
    }
    let (status, body) = bucket_request(config, "PUT").await?;
    if status.is_success() {
        return Ok(true);
    }
    if status.as_u16() == 409 && body.contains("BucketAlreadyOwnedByYou") {
        return Ok(false);
    }
    if status.as_u16() == 409 || status.as_u16() == 403 {
        // Created concurrently elsewhere, or we may not create buckets: fine if we can use it.
        return usable(config, status, &body).await;
    }
    Err(unavailable(
        bucket,
        format!("CreateBucket answered {status}: {body}"),
    ))
}

async fn usable(
    config: &S3Config,
    status: http::StatusCode,
    body: &str,
) -> Result<bool, StorageError> {
    use super::ObjectStorage;
    let store = super::backend::ObjectStoreBackend::s3(config)?;
    store.check().await.map(|()| false).map_err(|e| {
        unavailable(
            &config.bucket,
            format!("bucket cannot be created ({status} {body}) and is not usable: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_outside_us_east_1_is_created_with_its_location_constraint() {
        assert!(create_bucket_body("us-east-1").is_empty());
        let body = create_bucket_body("eu-west-1");
        let text = String::from_utf8(body.as_bytes().unwrap().to_vec()).unwrap();
        assert!(
            text.contains("<LocationConstraint>eu-west-1</LocationConstraint>"),
            "{text}"
        );
    }
}
