//! The embedded default broker: librdkafka's in-process mock cluster, a real
//! Kafka-protocol listener on 127.0.0.1 that any Kafka client can produce to.
//! It keeps data in memory only and exists for first runs, demos and tests.
//! librdkafka caps each mock partition at 5 MiB or 100 000 messages and
//! drops the oldest beyond that, so large loads need many partitions.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::error::SourceError;

pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster and creates `topic` with `partitions`.
    pub fn start(topic: &str, partitions: i32) -> Result<EmbeddedBroker, SourceError> {
        EmbeddedBroker::start_with(&[topic], partitions)
    }

    /// Starts a one-broker cluster and creates each of `topics` with
    /// `partitions`.
    pub fn start_with(topics: &[&str], partitions: i32) -> Result<EmbeddedBroker, SourceError> {
        let cluster =
            MockCluster::new(1).map_err(SourceError::kafka("starting the embedded broker"))?;
        let broker = EmbeddedBroker { cluster };
        for topic in topics {
            broker.create_topic(topic, partitions)?;
        }
        Ok(broker)
    }

    /// Creates another topic with `partitions`.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), SourceError> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .map_err(SourceError::kafka(format!("creating topic {topic}")))
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Takes the broker (and with it the group coordinator) down or back
    /// up: fault drills and tests of what a client does meanwhile.
    pub fn set_down(&self, down: bool) -> Result<(), SourceError> {
        let result = if down {
            self.cluster.broker_down(1)
        } else {
            self.cluster.broker_up(1)
        };
        result.map_err(SourceError::kafka("changing the embedded broker's state"))
    }
}
