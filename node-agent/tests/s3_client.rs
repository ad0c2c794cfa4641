//! The backup store's S3 client against a real S3-compatible service that checks signatures
//! (moto, started per test): whole and multipart uploads come back byte for byte, a missing
//! object is `NotFound`, a wrong secret is refused by the service, deletes are idempotent.

use std::net::Ipv4Addr;

use paddock_agent::runtime::storage::s3::{Bucket, Credentials, S3Error};
use paddock_tests::s3::{require_moto, S3Server};

const MIB: u64 = 1024 * 1024;

fn bucket(server: &S3Server, secret: &str, part_size: u64) -> Bucket {
    Bucket::new(
        &server.endpoint,
        &server.bucket,
        "us-east-1",
        "node-a/",
        Credentials {
            access_key_id: server.access_key_id.clone(),
            secret_access_key: secret.to_string(),
        },
        part_size,
    )
}

/// Bytes that do not compress or repeat (a part mixed up with another would show).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn uploads_whole_and_in_parts_and_downloads_them_back() {
    if !require_moto() {
        return;
    }
    let server = S3Server::start(Ipv4Addr::LOCALHOST).expect("start the S3 service");
    let dir = tempfile::tempdir().expect("temp dir");
    // Parts of 5 MiB (S3's smallest): 11 MiB goes up as three parts.
    let store = bucket(&server, &server.secret_access_key, 5 * MIB);

    let small = pseudo_random(100_000, 1);
    let small_path = dir.path().join("small");
    std::fs::write(&small_path, &small).expect("write");
    let key = store.key("small.tar.zst");
    store
        .put_file(&key, &small_path, None)
        .unwrap_or_else(|e| panic!("put small: {e}\n{}", server.log()));

    let large = pseudo_random((11 * MIB) as usize, 2);
    let large_path = dir.path().join("large");
    std::fs::write(&large_path, &large).expect("write");
    let large_key = store.key("large.tar.zst");
    store
        .put_file(&large_key, &large_path, None)
        .unwrap_or_else(|e| panic!("put large in parts: {e}\n{}", server.log()));
    store
        .put_bytes(&store.key("large.manifest.json"), b"{}")
        .expect("put bytes");

    assert_eq!(
        server.objects().expect("list"),
        vec![
            ("node-a/large.manifest.json".to_string(), 2),
            ("node-a/large.tar.zst".to_string(), 11 * MIB),
            ("node-a/small.tar.zst".to_string(), 100_000),
        ]
    );
    // What the service stored, read by another client, and what this client reads back.
    assert!(server.get("node-a/large.tar.zst").expect("get") == large);
    let back = dir.path().join("back");
    assert_eq!(store.get_to_file(&large_key, &back).expect("get"), 11 * MIB);
    assert!(std::fs::read(&back).expect("read") == large);
    assert_eq!(store.get_bytes(&key).expect("get small"), small);

    // A missing object.
    match store.get_bytes(&store.key("absent.manifest.json")) {
        Err(S3Error::NotFound { key, .. }) => assert_eq!(key, "node-a/absent.manifest.json"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // The service checks signatures: another secret is refused, and nothing is stored.
    let forged = bucket(&server, "not-the-secret", 5 * MIB);
    match forged.put_bytes(&forged.key("forged"), b"x") {
        Err(S3Error::Refused { status, code, .. }) => {
            assert_eq!(status, 403);
            assert_eq!(code, "SignatureDoesNotMatch");
        }
        other => panic!("a forged request was not refused: {other:?}"),
    }
    assert!(!server
        .objects()
        .expect("list")
        .iter()
        .any(|(key, _)| key.ends_with("forged")));

    // Deletes, twice (the second of an absent key is fine).
    for _ in 0..2 {
        store.delete(&large_key).expect("delete");
    }
    assert!(!server
        .objects()
        .expect("list")
        .iter()
        .any(|(key, _)| key == "node-a/large.tar.zst"));
}
