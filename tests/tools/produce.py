"""Produce a corpus to Kafka with kafka-python: a client that shares no code with ours.

Usage: produce.py BOOTSTRAP TOPIC CORPUS
CORPUS has one message a line: hex(key) TAB hex(value).
"""
import sys

from kafka import KafkaProducer

bootstrap, topic, path = sys.argv[1:4]
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
sent = 0
with open(path) as corpus:
    for line in corpus:
        key_hex, value_hex = line.rstrip("\n").split("\t")
        producer.send(topic, key=bytes.fromhex(key_hex), value=bytes.fromhex(value_hex))
        sent += 1
producer.flush(timeout=60)
producer.close()
print(f"produced {sent}")
