"""The peer: Pigeon's script and forward pigeons written with Quix Streams.

Reads the gift letters of a source topic and keeps those tagged `gift.sent` (the `ce_type`
header, as Pigeon's router reads it). By default it reshapes each as
`bench/gift-to-progress-and-rank.rhai` does (points = giftCount * price, keyed by anchor) and
writes the result to both destination topics; with `--forward` it writes each letter to both
topics as it came, bytes and key untouched, as a forward pigeon does. The letters' headers
travel with them, as Quix Streams passes them on.

Run by `scripts/bench` as its own process:
    python quix_gifts.py --brokers HOST:PORT --group G --source T --to A --to B \
        [--forward] [--producer-config JSON]
"""

import argparse
import json
import sys

from quixstreams import Application

TAG_HEADER = "ce_type"
TAG = b"gift.sent"


def tagged_gift(value, key, timestamp, headers):
    for name, raw in headers or ():
        if name == TAG_HEADER:
            return raw == TAG
    return False


def cleanse(gift):
    """gift.sent {uid, aid, roomId, giftId, giftCount, price} -> progress.add, or None."""
    count, price = gift.get("giftCount"), gift.get("price")
    if count is None or price is None:
        print("gift letter without giftCount or price", file=sys.stderr)
        return None
    points = count * price
    if points <= 0:
        return None
    return {"userId": gift["uid"], "anchorId": gift["aid"], "roomId": gift["roomId"], "points": points}


def anchor_key(progress):
    return "anchor-%s" % progress["anchorId"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--to", action="append", required=True, dest="destinations")
    parser.add_argument("--forward", action="store_true", help="forward the letters unchanged")
    parser.add_argument("--producer-config", default="{}", help="librdkafka producer properties, JSON")
    args = parser.parse_args()
    producer_config = json.loads(args.producer_config)
    print("peer: quix streams, producer settings %s" % json.dumps(producer_config, sort_keys=True), flush=True)

    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        producer_extra_config=producer_config,
        loglevel="WARNING",
    )
    if args.forward:
        source = app.topic(args.source, value_deserializer="bytes", key_deserializer="bytes")
        destinations = [app.topic(t, value_serializer="bytes", key_serializer="bytes") for t in args.destinations]
        sdf = app.dataframe(source).filter(tagged_gift, metadata=True)
        for topic in destinations:
            sdf.to_topic(topic)
    else:
        source = app.topic(args.source, value_deserializer="json", key_deserializer="str")
        destinations = [app.topic(t, value_serializer="json", key_serializer="str") for t in args.destinations]
        sdf = app.dataframe(source).filter(tagged_gift, metadata=True)
        sdf = sdf.apply(cleanse).filter(lambda progress: progress is not None)
        for topic in destinations:
            sdf.to_topic(topic, key=anchor_key)
    app.run()


if __name__ == "__main__":
    main()
