//! The library against several mock brokers sharing one log: batches go to their partition's
//! owner, a not-owner answer reroutes them, ambiguous failures are retried only when the
//! producer may duplicate, and connecting and reading survive brokers that are down.

use std::time::Duration;

use silt_client::{Client, PartitionReader, Producer, ProducerConfig, ProducerRecord, StartSpec};
use tonic::Code;

use crate::mock::{dead_url, start, start_cluster};

fn quick() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(2),
        batch_bytes: 1024,
        ..ProducerConfig::default()
    }
}

/// Sends `count` records to each of `partitions` and waits for every ack.
async fn produce(producer: &Producer, partitions: &[u32], count: usize) -> Vec<(u32, i64)> {
    let mut futures = Vec::new();
    for i in 0..count {
        for &p in partitions {
            let record = ProducerRecord::new(format!("p{p}-{i:04}")).with_partition(p);
            futures.push(producer.send(record).await.unwrap());
        }
    }
    let mut acks = Vec::new();
    for future in futures {
        acks.push(future.await.unwrap());
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_to_their_partitions_owner() {
    let brokers = start_cluster(2).await;
    let (a, b) = (&brokers[0], &brokers[1]);
    {
        let mut state = a.mock.state();
        state.owners.insert(0, a.address());
        state.owners.insert(1, b.address());
    }
    // Bootstrap with A only: B is learnt from ClusterStatus.
    let client = Client::connect(&a.url).await.unwrap();
    client.create_topic("t", 2, None, None).await.unwrap();
    let producer = Producer::new(&client, "t", quick()).await.unwrap();
    assert!(client.brokers().contains(&b.url), "{:?}", client.brokers());

    let acks = produce(&producer, &[0, 1], 300).await;
    assert_eq!(acks.len(), 600);
    let state = a.mock.state();
    assert_eq!(state.not_owner_answers, 0, "every batch went to its owner");
    let to_a = &state.received[&a.address()];
    let to_b = &state.received[&b.address()];
    assert!(!to_a.is_empty() && to_a.iter().all(|&p| p == 0), "{to_a:?}");
    assert!(!to_b.is_empty() && to_b.iter().all(|&p| p == 1), "{to_b:?}");
    assert_eq!(state.topics["t"][0].next, 300);
    assert_eq!(state.topics["t"][1].next, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_owner_answer_reroutes_to_the_new_owner_and_acks_once() {
    let brokers = start_cluster(2).await;
    let (a, b) = (&brokers[0], &brokers[1]);
    a.mock.state().owners.insert(0, a.address());
    let client = Client::connect(&format!("{},{}", a.url, b.url))
        .await
        .unwrap();
    client.create_topic("t", 1, None, None).await.unwrap();
    // Not-owner answers are marked not-stored: retried even by a producer that never retries
    // an ambiguous failure.
    let config = ProducerConfig {
        retry_ambiguous: false,
        ..quick()
    };
    let producer = Producer::new(&client, "t", config).await.unwrap();
    assert_eq!(produce(&producer, &[0], 1).await, [(0, 0)]);

    // Partition 0 moves to B; the producer's table still says A.
    a.mock.state().owners.insert(0, b.address());
    assert_eq!(produce(&producer, &[0], 1).await, [(0, 1)]);
    let state = a.mock.state();
    assert_eq!(state.not_owner_answers, 1);
    assert!(
        state.cluster_status_calls >= 2,
        "the answer made it refresh"
    );
    assert_eq!(
        state.received[&b.address()],
        [0],
        "retried at the new owner"
    );
    assert_eq!(state.topics["t"][0].next, 2, "each record stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_hint_beats_a_lagging_cluster_status() {
    let brokers = start_cluster(3).await;
    let (a, b) = (&brokers[0], &brokers[1]);
    a.mock.state().owners.insert(0, a.address());
    let client = Client::connect(&a.url).await.unwrap();
    client.create_topic("t", 1, None, None).await.unwrap();
    let producer = Producer::new(&client, "t", quick()).await.unwrap();
    {
        // B owns partition 0 now, but ClusterStatus still says A.
        let mut state = a.mock.state();
        state.reported_owners = Some(state.owners.clone());
        state.owners.insert(0, b.address());
    }
    assert_eq!(produce(&producer, &[0], 3).await.len(), 3);
    let state = a.mock.state();
    assert_eq!(
        state.not_owner_answers, 1,
        "the hint was followed after one refusal"
    );
    assert_eq!(state.topics["t"][0].next, 3);
    assert!(!state.received.contains_key(&brokers[2].address()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_failures_fail_the_records_unless_retrying_them_is_allowed() {
    let (mock, client) = start().await;
    client.create_topic("t", 1, None, None).await.unwrap();
    let exactly_once = ProducerConfig {
        retry_ambiguous: false,
        ..quick()
    };
    let producer = Producer::new(&client, "t", exactly_once).await.unwrap();
    // The mock's refusal is UNAVAILABLE without silt-not-stored: it may have been stored.
    mock.state().refuse = 1;
    let err = producer
        .send(ProducerRecord::new("x"))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.is_ambiguous() && !err.is_not_stored());
    assert_eq!(mock.state().produce_calls, 1, "not retried");

    let at_least_once = Producer::new(&client, "t", quick()).await.unwrap();
    mock.state().refuse = 1;
    let ack = at_least_once
        .send(ProducerRecord::new("y"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack, (0, 0));
    assert_eq!(mock.state().produce_calls, 3, "retried once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_skips_brokers_that_are_down_and_calls_fail_over() {
    let mut brokers = start_cluster(2).await;
    let dead = dead_url().await;
    let list = format!("{dead}, {} ,{}", brokers[0].url, brokers[1].url);
    let client = Client::connect(&list).await.unwrap();
    assert_eq!(client.url(), brokers[0].url);
    client.create_topic("t", 1, None, None).await.unwrap();

    brokers[0].stop().await;
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1, "answered by the next broker");
    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.brokers.len(), 1);

    let err = Client::connect(&dead).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains(&dead), "{err}");

    // A call on a channel that cannot connect sent nothing: retriable, not ambiguous.
    let channel = tonic::transport::Endpoint::from_shared(dead.clone())
        .unwrap()
        .connect_lazy();
    let err = Client::from_channel(&dead, channel)
        .stats()
        .await
        .unwrap_err();
    assert!(err.is_connect_failure() && err.is_transport(), "{err:?}");
    assert!(err.is_retriable() && !err.is_ambiguous());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_and_the_reader_move_to_another_broker() {
    let mut brokers = start_cluster(2).await;
    let client = Client::connect(&format!("{},{}", brokers[0].url, brokers[1].url))
        .await
        .unwrap();
    client.create_topic("t", 1, None, None).await.unwrap();
    let producer = Producer::new(&client, "t", quick()).await.unwrap();
    produce(&producer, &[0], 10).await;

    let mut reader = PartitionReader::new(&client, "t", 0, StartSpec::Earliest)
        .await
        .unwrap();
    assert_eq!(reader.broker(), brokers[0].url);
    assert_eq!(reader.next_batch(Duration::ZERO).await.unwrap().len(), 10);

    brokers[0].stop().await;
    // Unowned partitions go to any broker: the producer leaves the stopped one too.
    produce(&producer, &[0], 10).await;
    let records = reader.next_batch(Duration::ZERO).await.unwrap();
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (10..20).collect::<Vec<_>>());
    assert_eq!(reader.broker(), brokers[1].url);
}
