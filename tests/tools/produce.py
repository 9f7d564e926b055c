"""Produce a corpus to Kafka with kafka-python: a client that shares no code with ours.

Usage: produce.py BOOTSTRAP TOPIC CORPUS [--one-per-batch]
CORPUS has one message a line: hex(key) TAB hex(value).

--one-per-batch sends each message as a record batch of its own. tansu 0.6
answers a fetch that starts inside a batch with the batches after it (its
storage lists batches by base offset from the fetch offset), so a consumer
that resumes mid-batch, as every new owner of a partition does, silently
misses the rest of that batch; Apache Kafka returns the batch and the client
skips the records before the offset. Tests that hand partitions between
consumers use this flag so that every offset starts a batch.
"""
import sys

from kafka import KafkaProducer

bootstrap, topic, path = sys.argv[1:4]
one_per_batch = "--one-per-batch" in sys.argv[4:]
options = {"batch_size": 0} if one_per_batch else {}
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", **options)
sent = 0
with open(path) as corpus:
    for line in corpus:
        key_hex, value_hex = line.rstrip("\n").split("\t")
        producer.send(topic, key=bytes.fromhex(key_hex), value=bytes.fromhex(value_hex))
        sent += 1
producer.flush(timeout=60)
producer.close()
print(f"produced {sent}")
