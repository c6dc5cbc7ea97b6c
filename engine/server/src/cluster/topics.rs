//! Creating the cluster's topics at start, where the broker allows it.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// A topic the cluster needs, and how to create it when it is missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions when created.
    pub partitions: i32,
    /// Topic configuration when created (e.g. `retention.ms=-1`).
    pub config: Vec<(String, String)>,
}

/// What [`ensure`] did per topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Created now.
    Created,
    /// It was there.
    Existed,
    /// Not created (the broker refused, or no broker answered): the reason.
    /// The topic may still exist or be created by an operator.
    Failed(String),
}

/// Creates the topics that are missing (replication factor: the broker's
/// default). Never fails the start: a broker that refuses (no ACL, auto
/// creation managed elsewhere) is logged, and readiness then waits for the
/// topic like for any other.
pub async fn ensure(
    brokers: &str,
    options: &[(String, String)],
    topics: &[TopicSpec],
    timeout: Duration,
) -> Vec<(String, Ensured)> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    for (key, value) in options {
        client.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = match client.create() {
        Ok(admin) => admin,
        Err(e) => {
            return topics
                .iter()
                .map(|t| (t.name.clone(), Ensured::Failed(e.to_string())))
                .collect()
        }
    };
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(-1));
            for (key, value) in &t.config {
                n = n.set(key, value);
            }
            n
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    match admin.create_topics(new.iter(), &options).await {
        Ok(results) => results
            .into_iter()
            .map(|r| match r {
                Ok(name) => (name, Ensured::Created),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, Ensured::Existed),
                Err((name, code)) => (name, Ensured::Failed(code.to_string())),
            })
            .collect(),
        Err(e) => topics
            .iter()
            .map(|t| (t.name.clone(), Ensured::Failed(e.to_string())))
            .collect(),
    }
}
