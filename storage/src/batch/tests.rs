use super::*;
use kafka_protocol::records::RecordBatchDecoder;

use proptest::prelude::*;

const LIMITS: BatchLimits = BatchLimits {
    max_batch_bytes: 1 << 20,
    max_record_bytes: 1 << 16,
    max_uncompressed_bytes: 64 << 20,
};

fn records(n: usize) -> Vec<RecordData> {
    (0..n)
        .map(|i| RecordData {
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(format!("{{\"event\":\"click\",\"n\":{i}}}"))),
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn batch(n: usize) -> Bytes {
    encode_batch(&records(n), Compression::None, ProducerInfo::default()).unwrap()
}

/// Rewrites the CRC after a test tampered with covered bytes, so only the tampering is wrong.
fn fix_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[ATTRIBUTES_POS..]);
    b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn encoded_batch_validates_and_header_matches_kafka_protocol() {
    let b = batch(5);
    let valid = validate_batch(&b, &LIMITS).unwrap();
    assert_eq!(valid.record_count, 5);
    let info = RecordBatchDecoder::decode_batch_info(&mut b.clone()).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].record_count, valid.header.record_count);
    assert_eq!(info[0].min_timestamp, valid.header.base_timestamp);
    assert_eq!(info[0].producer_id, valid.header.producer_id);
    assert_eq!(valid.header.max_timestamp, 1_700_000_000_004);
    assert_eq!(valid.header.last_offset_delta, 4);
}

#[test]
fn base_offset_rewrite_keeps_crc_and_shifts_offsets() {
    let mut b = batch(3).to_vec();
    set_base_offset(&mut b, 41);
    validate_batch(&b, &LIMITS).unwrap();
    let decoded = decode_batches(Bytes::from(b), 0).unwrap();
    assert_eq!(
        decoded.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![41, 42, 43]
    );
    assert_eq!(decoded[1].key.as_deref(), Some(&b"key-1"[..]));
    assert_eq!(
        decoded[1].headers,
        vec![("h".to_string(), Some(Bytes::from_static(b"v")))]
    );
}

#[test]
fn decode_skips_records_below_min_offset() {
    let mut b = batch(4).to_vec();
    set_base_offset(&mut b, 10);
    let decoded = decode_batches(Bytes::from(b), 12).unwrap();
    assert_eq!(
        decoded.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![12, 13]
    );
}

#[test]
fn every_codec_round_trips_and_validates() {
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let b = encode_batch(&records(20), codec, ProducerInfo::default()).unwrap();
        let valid = validate_batch(&b, &LIMITS).unwrap();
        assert_eq!(valid.header.compression(), Some(codec));
        assert_eq!(decode_batches(b, 0).unwrap().len(), 20, "{codec:?}");
    }
}

#[test]
fn short_batch_is_refused() {
    assert_eq!(
        validate_batch(&[0u8; 10], &LIMITS),
        Err(BatchError::TooShort { len: 10 })
    );
}

#[test]
fn bad_crc_is_refused() {
    let mut b = batch(2).to_vec();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    assert!(matches!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::BadCrc { .. })
    ));
}

#[test]
fn bad_magic_is_refused() {
    let mut b = batch(2).to_vec();
    b[MAGIC_POS] = 1;
    assert_eq!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::BadMagic { magic: 1 })
    );
}

#[test]
fn length_field_must_match_bytes() {
    let mut b = batch(2).to_vec();
    b.push(0);
    assert!(matches!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::LengthMismatch { .. })
    ));
}

#[test]
fn record_count_must_match_records() {
    let mut b = batch(3).to_vec();
    b[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&4i32.to_be_bytes());
    b[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&3i32.to_be_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::BadRecordCount { .. })
    ));

    let mut b = batch(3).to_vec();
    b[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&2i32.to_be_bytes());
    b[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&1i32.to_be_bytes());
    fix_crc(&mut b);
    let err = validate_batch(&b, &LIMITS).unwrap_err();
    assert!(err.to_string().contains("follow the last record"), "{err}");
}

#[test]
fn last_offset_delta_must_match_count() {
    let mut b = batch(3).to_vec();
    b[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&7i32.to_be_bytes());
    fix_crc(&mut b);
    assert!(matches!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::BadRecordCount { .. })
    ));
}

#[test]
fn compressed_record_count_is_checked() {
    let mut b = encode_batch(&records(3), Compression::Lz4, ProducerInfo::default())
        .unwrap()
        .to_vec();
    b[RECORD_COUNT_POS..RECORD_COUNT_POS + 4].copy_from_slice(&4i32.to_be_bytes());
    b[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&3i32.to_be_bytes());
    fix_crc(&mut b);
    assert!(validate_batch(&b, &LIMITS).is_err());
}

#[test]
fn record_and_batch_limits_are_enforced() {
    let big = vec![RecordData {
        value: Some(Bytes::from(vec![b'x'; 2000])),
        timestamp_ms: 1,
        ..RecordData::default()
    }];
    let small = BatchLimits {
        max_record_bytes: 1000,
        ..LIMITS
    };
    for codec in [Compression::None, Compression::Zstd] {
        let b = encode_batch(&big, codec, ProducerInfo::default()).unwrap();
        assert!(
            matches!(
                validate_batch(&b, &small),
                Err(BatchError::RecordTooLarge { index: 0, .. })
            ),
            "{codec:?}"
        );
    }
    let b = batch(50);
    let tiny = BatchLimits {
        max_batch_bytes: 100,
        max_record_bytes: 1000,
        ..LIMITS
    };
    assert!(matches!(
        validate_batch(&b, &tiny),
        Err(BatchError::BatchTooLarge { .. })
    ));
}

#[test]
fn control_batches_are_refused() {
    let mut b = batch(1).to_vec();
    b[ATTRIBUTES_POS + 1] |= ATTR_CONTROL as u8;
    fix_crc(&mut b);
    assert_eq!(validate_batch(&b, &LIMITS), Err(BatchError::ControlBatch));
}

#[test]
fn a_produced_batch_cannot_carry_a_delete_horizon() {
    // Set by a client, it would decide when key compaction drops the batch's tombstones.
    let mut b = batch(1).to_vec();
    b[ATTRIBUTES_POS + 1] |= ATTR_DELETE_HORIZON as u8;
    fix_crc(&mut b);
    assert_eq!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::DeleteHorizonSet)
    );
}

#[test]
fn unknown_codec_is_refused() {
    let mut b = batch(1).to_vec();
    b[ATTRIBUTES_POS + 1] |= 0x07;
    fix_crc(&mut b);
    assert!(matches!(
        validate_batch(&b, &LIMITS),
        Err(BatchError::BadCompression { codec: 7, .. })
    ));
}

#[test]
fn split_batches_walks_concatenated_batches() {
    let mut all = Vec::new();
    for (base, n) in [(0i64, 2usize), (2, 3)] {
        let mut b = batch(n).to_vec();
        set_base_offset(&mut b, base);
        all.extend_from_slice(&b);
    }
    let all = Bytes::from(all);
    let parts: Vec<_> = split_batches(&all).collect::<Result<_, _>>().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].0.base_offset, 2);
    assert_eq!(parts[1].0.last_offset(), 4);
    assert!(split_batches(&all.slice(..all.len() - 1)).any(|r| r.is_err()));
}

proptest! {
    #[test]
    fn validate_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = validate_batch(&bytes, &LIMITS);
        let _ = split_batches(&Bytes::from(bytes)).count();
    }

    #[test]
    fn flipped_covered_bytes_are_detected(n in 1usize..20, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = batch(n).to_vec();
        let i = ATTRIBUTES_POS + at.index(b.len() - ATTRIBUTES_POS);
        b[i] ^= 1 << bit;
        prop_assert!(validate_batch(&b, &LIMITS).is_err());
    }

    #[test]
    fn truncated_batches_are_refused(n in 1usize..20, cut in 1usize..200) {
        let b = batch(n);
        let cut = cut.min(b.len());
        prop_assert!(validate_batch(&b[..b.len() - cut], &LIMITS).is_err());
    }
}

use super::testing::{CODECS, compress, raw_batch, zero_records, zigzag};

#[test]
fn compression_bombs_are_refused_at_the_cap() {
    // 16 MiB of legal records (each within the record limit) in a few KiB, against a 1 MiB
    // budget: refused once the stream passes 1 MiB.
    let limits = BatchLimits {
        max_batch_bytes: 8 << 20,
        max_record_bytes: 64 << 10,
        max_uncompressed_bytes: 1 << 20,
    };
    for codec in CODECS {
        let stream = compress(codec, zero_records(4096, 4096));
        let b = raw_batch(codec, 4096, &stream);
        assert!(
            b.len() < 2 << 20,
            "{codec:?}: the bomb is small ({} B)",
            b.len()
        );
        let err = validate_batch(&b, &limits).unwrap_err();
        assert!(
            matches!(err, BatchError::DecompressedTooLarge { limit, .. } if limit == 1 << 20),
            "{codec:?}: {err}"
        );
        // The record count bounds the work too: 8 records of at most 64 KiB cannot be 16 MiB.
        let b = raw_batch(codec, 8, &stream);
        let roomy = BatchLimits {
            max_uncompressed_bytes: 1 << 30,
            ..limits
        };
        assert!(
            matches!(
                validate_batch(&b, &roomy),
                Err(BatchError::DecompressedTooLarge { .. } | BatchError::BadRecordCount { .. })
            ),
            "{codec:?}"
        );
    }
}

#[test]
fn a_record_length_beyond_32_bits_is_refused_by_its_length() {
    let limits = BatchLimits {
        max_uncompressed_bytes: u64::MAX,
        ..LIMITS
    };
    for codec in CODECS {
        // One record that says it is 4 GiB long (the stream holds its first KiB).
        let stream = compress(codec, |w| {
            w.write_all(&zigzag(4 << 30)).unwrap();
            w.write_all(&[0u8; 1024]).unwrap();
        });
        let err = validate_batch(&raw_batch(codec, 1, &stream), &limits).unwrap_err();
        assert!(
            matches!(err, BatchError::RecordTooLarge { index: 0, len, .. } if len == 4 << 30),
            "{codec:?}: {err}"
        );
    }
}

#[test]
fn compressed_streams_must_hold_exactly_their_records() {
    for codec in CODECS {
        let stream = compress(codec, zero_records(3, 100));
        let b = raw_batch(codec, 3, &stream);
        let valid = validate_batch(&b, &LIMITS).unwrap();
        assert_eq!((valid.record_count, valid.uncompressed_bytes), (3, 3 * 102));
        for (count, what) in [(2, "bytes after the last record"), (4, "a missing record")] {
            assert!(
                validate_batch(&raw_batch(codec, count, &stream), &LIMITS).is_err(),
                "{codec:?}: {what}"
            );
        }
        // Garbage after the compressed stream, or a cut stream.
        let mut trailing = stream.clone();
        trailing.extend_from_slice(b"trailing garbage");
        let cut = &stream[..stream.len() - 3];
        for bad in [&trailing[..], cut] {
            assert!(
                validate_batch(&raw_batch(codec, 3, bad), &LIMITS).is_err(),
                "{codec:?}"
            );
        }
    }
}

#[test]
fn the_uncompressed_budget_applies_to_plain_batches_too() {
    let b = batch(50);
    let tight = BatchLimits {
        max_uncompressed_bytes: 100,
        ..LIMITS
    };
    assert!(matches!(
        validate_batch(&b, &tight),
        Err(BatchError::DecompressedTooLarge { .. })
    ));
}

#[test]
fn record_bodies_are_checked_field_by_field() {
    use super::testing::record_body;
    let batch_of = |codec: Compression, body: Vec<u8>| {
        let stream = compress(codec, |w| {
            w.write_all(&zigzag(body.len() as i64)).unwrap();
            w.write_all(&body).unwrap();
        });
        raw_batch(codec, 1, &stream)
    };
    for codec in [Compression::None, Compression::Zstd] {
        validate_batch(&batch_of(codec, record_body(0, 40)), &LIMITS).unwrap();
        let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
        // A timestamp delta that overflows the base timestamp (a reader's decoder would wrap
        // or panic on it).
        let mut body = vec![0u8];
        body.extend(zigzag(i64::MAX));
        body.extend([0, 1, 0, 0]);
        bad.push(("timestamp overflow", body));
        // An offset delta that is not the record's index.
        bad.push(("offset delta", {
            let mut b = record_body(0, 40);
            b[2] = 2; // zigzag(1)
            b
        }));
        // A negative key length other than -1 (null).
        bad.push(("key length", vec![0, 0, 0, 3, 0, 0]));
        // A null header key.
        bad.push(("null header key", vec![0, 0, 0, 1, 0, 2, 1, 0]));
        // Bytes after the last header.
        bad.push(("trailing", {
            let mut b = record_body(0, 40);
            b.push(0);
            b
        }));
        for (what, body) in bad {
            let err = validate_batch(&batch_of(codec, body), &LIMITS).unwrap_err();
            assert!(
                matches!(err, BatchError::BadRecord { index: 0, .. }),
                "{codec:?} {what}: {err}"
            );
        }
    }
}

proptest! {
    /// Silt's decoder reads exactly what `kafka-protocol`'s encoder wrote — and what its
    /// decoder reads — for every codec, with null and empty keys and values and headers.
    #[test]
    fn decoding_agrees_with_kafka_protocol(
        records in proptest::collection::vec(
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
                proptest::collection::vec(("[a-z]{0,5}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10))), 0..3),
                0i64..1_000_000,
            ),
            1..20,
        ),
        codec in prop::sample::select(vec![Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]),
        base in 0i64..1_000_000_000,
    ) {
        let input: Vec<RecordData> = records
            .iter()
            .map(|(k, v, h, ts)| RecordData {
                key: k.clone().map(Bytes::from),
                value: v.clone().map(Bytes::from),
                // Distinct keys: the encoder keeps headers in a map.
                headers: h
                    .iter()
                    .enumerate()
                    .map(|(j, (hk, hv))| (format!("{hk}{j}"), hv.clone().map(Bytes::from)))
                    .collect(),
                timestamp_ms: 1_700_000_000_000 + ts,
            })
            .collect();
        let mut b = encode_batch(&input, codec, ProducerInfo::default()).unwrap().to_vec();
        set_base_offset(&mut b, base);
        validate_batch(&b, &LIMITS).unwrap();
        let ours = decode_batches(Bytes::from(b.clone()), 0).unwrap();
        prop_assert_eq!(ours.len(), input.len());
        for (i, (got, want)) in ours.iter().zip(&input).enumerate() {
            prop_assert_eq!(got.offset, base + i as i64);
            prop_assert_eq!(got.timestamp_ms, want.timestamp_ms);
            prop_assert_eq!(&got.key, &want.key);
            prop_assert_eq!(&got.value, &want.value);
            prop_assert_eq!(&got.headers, &want.headers);
        }
        let theirs = RecordBatchDecoder::decode(&mut Bytes::from(b)).unwrap();
        for (got, r) in ours.iter().zip(theirs.records) {
            prop_assert_eq!(got.offset, r.offset);
            prop_assert_eq!(got.timestamp_ms, r.timestamp);
            prop_assert_eq!(&got.value, &r.value);
        }
        // Reading from a later offset drops the records before it.
        let encoded = encode_batch(&input, codec, ProducerInfo::default()).unwrap();
        let later = decode_batches(encoded, 1).unwrap();
        prop_assert_eq!(later.len(), input.len() - 1);
    }
}

/// Records keyed `k{i % 3}`, every fourth one a tombstone (null value).
fn keyed_records(n: usize) -> Vec<RecordData> {
    (0..n)
        .map(|i| RecordData {
            key: Some(Bytes::from(format!("k{}", i % 3))),
            value: (i % 4 != 3).then(|| Bytes::from(format!("value-{i}"))),
            headers: vec![("h".into(), Some(Bytes::from(format!("{i}"))))],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

#[test]
fn null_keys_are_counted_by_validation() {
    let mut recs = records(4);
    recs[1].key = None;
    recs[3].key = None;
    for codec in [Compression::None, Compression::Zstd] {
        let b = encode_batch(&recs, codec, ProducerInfo::default()).unwrap();
        assert_eq!(
            validate_batch(&b, &LIMITS).unwrap().null_keys,
            2,
            "{codec:?}"
        );
    }
    assert_eq!(validate_batch(&batch(3), &LIMITS).unwrap().null_keys, 0);
}

/// `records` encoded with `codec` as stored at `base_offset`, and its header.
fn stored_at(records: &[RecordData], codec: Compression, base_offset: i64) -> (Bytes, BatchHeader) {
    let mut raw = encode_batch(records, codec, ProducerInfo::default())
        .unwrap()
        .to_vec();
    set_base_offset(&mut raw, base_offset);
    let b = Bytes::from(raw);
    let header = BatchHeader::read(&b).unwrap();
    (b, header)
}

#[test]
fn retain_records_thins_a_batch_keeping_offsets_timestamps_and_codec() {
    let recs = keyed_records(10);
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let (b, header) = stored_at(&recs, codec, 100);
        let mut seen = Vec::new();
        // Keep the even offsets and the last record.
        let out = retain_records(&header, &b, None, |r| {
            seen.push((
                r.offset,
                r.key.map(<[u8]>::to_vec),
                r.null_value,
                r.timestamp_ms,
            ));
            r.offset % 2 == 0 || r.offset == 109
        })
        .unwrap();
        assert_eq!(seen.len(), 10);
        assert_eq!(
            seen[3],
            (103, Some(b"k0".to_vec()), true, 1_700_000_000_003)
        );
        let Retained::Some(thin) = out else {
            panic!("{codec:?}: expected a rewritten batch, got {out:?}");
        };
        let h = BatchHeader::read(&thin).unwrap();
        assert_eq!(h.base_offset, 100);
        assert_eq!(h.last_offset(), 109, "the last offset delta is kept");
        assert_eq!(h.record_count, 6);
        assert_eq!(h.compression(), Some(codec));
        assert_eq!(h.max_timestamp, header.max_timestamp);
        let crc = u32::from_be_bytes(thin[CRC_POS..CRC_POS + 4].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&thin[ATTRIBUTES_POS..]));
        let decoded = decode_batches(thin.clone(), 0).unwrap();
        let offsets: Vec<i64> = decoded.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![100, 102, 104, 106, 108, 109], "{codec:?}");
        for r in &decoded {
            let i = (r.offset - 100) as usize;
            assert_eq!(r.key, recs[i].key);
            assert_eq!(r.value, recs[i].value);
            assert_eq!(r.timestamp_ms, recs[i].timestamp_ms);
            assert_eq!(r.headers, recs[i].headers);
        }
        // A thinned batch decodes in kafka-protocol too, with the same offsets.
        let theirs = RecordBatchDecoder::decode(&mut thin.clone()).unwrap();
        let theirs: Vec<i64> = theirs.records.iter().map(|r| r.offset).collect();
        assert_eq!(theirs, offsets, "{codec:?}");
        // Reading from an offset inside a gap starts at the next kept record.
        let from = decode_batches(thin.clone(), 103).unwrap();
        assert_eq!(from[0].offset, 104);
        // Thinning again works on gaps, and keeping everything keeps the batch.
        let again = retain_records(&h, &thin, None, |r| r.offset != 104).unwrap();
        let Retained::Some(again) = again else {
            panic!("expected a rewritten batch");
        };
        let offsets: Vec<i64> = decode_batches(again, 0)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, vec![100, 102, 106, 108, 109]);
        assert_eq!(
            retain_records(&h, &thin, None, |_| true).unwrap(),
            Retained::All
        );
        assert_eq!(
            retain_records(&h, &thin, None, |_| false).unwrap(),
            Retained::Nothing
        );
    }
}

#[test]
fn a_kept_tombstone_stamps_the_delete_horizon_and_records_keep_their_timestamps() {
    let recs = keyed_records(10);
    let horizon = 1_800_000_000_000;
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let (b, header) = stored_at(&recs, codec, 100);
        assert_eq!(header.delete_horizon(), None);
        // Everything kept, a tombstone among it: the batch is rewritten to carry the horizon.
        let Retained::Some(stamped) = retain_records(&header, &b, Some(horizon), |_| true).unwrap()
        else {
            panic!("{codec:?}: a batch keeping a tombstone is stamped");
        };
        let h = BatchHeader::read(&stamped).unwrap();
        assert_eq!(h.delete_horizon(), Some(horizon));
        assert_eq!(h.compression(), Some(codec));
        assert_eq!(
            (h.record_count, h.max_timestamp),
            (10, header.max_timestamp)
        );
        assert_eq!(h.min_timestamp(), header.max_timestamp);
        let crc = u32::from_be_bytes(stamped[CRC_POS..CRC_POS + 4].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&stamped[ATTRIBUTES_POS..]));
        let decoded = decode_batches(stamped.clone(), 0).unwrap();
        assert_eq!(decoded.len(), 10);
        for r in &decoded {
            let i = (r.offset - 100) as usize;
            assert_eq!(r.timestamp_ms, recs[i].timestamp_ms, "{codec:?}");
            assert_eq!((&r.key, &r.value), (&recs[i].key, &recs[i].value));
        }
        // Kafka's decoder reads the same timestamps (base + delta, deltas now negative).
        let theirs = RecordBatchDecoder::decode(&mut stamped.clone()).unwrap();
        for (r, want) in theirs.records.iter().zip(&recs) {
            assert_eq!(r.timestamp, want.timestamp_ms, "{codec:?}");
        }
        // Records of a stamped batch see its horizon; it is stamped once, not moved.
        let mut horizons = Vec::new();
        let again = retain_records(&h, &stamped, Some(horizon + 1), |r| {
            horizons.push(r.delete_horizon);
            true
        })
        .unwrap();
        assert_eq!(again, Retained::All);
        assert!(horizons.iter().all(|x| *x == Some(horizon)));
        // Thinning a stamped batch keeps its horizon and timestamps.
        let Retained::Some(thin) =
            retain_records(&h, &stamped, Some(horizon + 1), |r| r.offset % 2 == 1).unwrap()
        else {
            panic!("expected a rewritten batch");
        };
        let t = BatchHeader::read(&thin).unwrap();
        assert_eq!(t.delete_horizon(), Some(horizon));
        for r in decode_batches(thin, 0).unwrap() {
            assert_eq!(r.timestamp_ms, recs[(r.offset - 100) as usize].timestamp_ms);
        }
    }
    // A timestamp the horizon cannot be written against: the batch stays unstamped, whole.
    let mut far = encode_batch(
        &keyed_records(4),
        Compression::None,
        ProducerInfo::default(),
    )
    .unwrap()
    .to_vec();
    far[BASE_TIMESTAMP_POS..BASE_TIMESTAMP_POS + 8].copy_from_slice(&(i64::MIN + 10).to_be_bytes());
    fix_crc(&mut far);
    let b = Bytes::from(far);
    let header = BatchHeader::read(&b).unwrap();
    assert_eq!(
        retain_records(&header, &b, Some(horizon), |_| true).unwrap(),
        Retained::All
    );
    let Retained::Some(thin) =
        retain_records(&header, &b, Some(horizon), |r| r.offset != 0).unwrap()
    else {
        panic!("expected a rewritten batch");
    };
    assert_eq!(BatchHeader::read(&thin).unwrap().delete_horizon(), None);
    // A log-append-time batch is stamped with its deltas moved too, so none overflows.
    let mut lat = encode_batch(&recs, Compression::None, ProducerInfo::default())
        .unwrap()
        .to_vec();
    lat[ATTRIBUTES_POS + 1] |= ATTR_LOG_APPEND_TIME as u8;
    fix_crc(&mut lat);
    let lat = Bytes::from(lat);
    let header = BatchHeader::read(&lat).unwrap();
    let Retained::Some(stamped) = retain_records(&header, &lat, Some(horizon), |_| true).unwrap()
    else {
        panic!("a log-append-time batch keeping a tombstone is stamped");
    };
    assert_eq!(
        BatchHeader::read(&stamped).unwrap().delete_horizon(),
        Some(horizon)
    );
    let decoded = decode_batches(stamped, 0).unwrap();
    assert!(
        decoded
            .iter()
            .all(|r| r.timestamp_ms == header.max_timestamp)
    );
    // No tombstone kept: no horizon, and a batch kept whole stays as it is.
    let b = batch(3);
    let header = BatchHeader::read(&b).unwrap();
    assert_eq!(
        retain_records(&header, &b, Some(horizon), |_| true).unwrap(),
        Retained::All
    );
}

#[test]
fn stored_offset_deltas_must_increase_within_the_batch() {
    let b = batch(3);
    let header = BatchHeader::read(&b).unwrap();
    let Retained::Some(thin) = retain_records(&header, &b, None, |r| r.offset != 1).unwrap() else {
        panic!("expected a rewritten batch");
    };
    // Claiming a last offset delta below a record's offset delta is refused.
    let mut bad = thin.to_vec();
    bad[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&1i32.to_be_bytes());
    fix_crc(&mut bad);
    assert!(decode_batches(Bytes::from(bad), 0).is_err());
    // A produced batch still needs dense deltas.
    assert!(validate_batch(&thin, &LIMITS).is_err());
}

#[test]
fn an_empty_batch_reads_as_no_records_and_spans_its_offsets() {
    let e = empty_batch(40, 59, 1_700_000_000_000);
    let h = BatchHeader::read(&e).unwrap();
    assert_eq!(
        (h.base_offset, h.last_offset(), h.record_count),
        (40, 59, 0)
    );
    assert!(decode_batches(e.clone(), 0).unwrap().is_empty());
    let crc = u32::from_be_bytes(e[CRC_POS..CRC_POS + 4].try_into().unwrap());
    assert_eq!(crc, crc32c::crc32c(&e[ATTRIBUTES_POS..]));
    let theirs = RecordBatchDecoder::decode(&mut e.clone()).unwrap();
    assert!(theirs.records.is_empty());
    let split: Vec<_> = split_batches(&e).collect::<Result<_, _>>().unwrap();
    assert_eq!(split.len(), 1);
}
