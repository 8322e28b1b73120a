"""GreenMQ answers seeded AMQP method sequences step by step as RabbitMQ 3.10 does: against
the answers recorded in tests/differential/rabbitmq-3.10.json on every run, and against a
live reference broker too when $GREENMQ_TEST_AMQP_URL names one (tests/differential/amqp_diff.py
says how the sequences are made, compared and re-recorded)."""

import os

import pytest

from tests.differential import amqp_diff

RECORDING = os.path.join(os.path.dirname(__file__), "differential", "rabbitmq-3.10.json")
# Differences shown in a failure: the first of each sequence, and only that many of them.
SHOWN = 5


@pytest.fixture(scope="module")
def greenmq_url(broker):
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2f"


@pytest.fixture(scope="module")
def greenmq_management_url(broker):
    """Where the sequences set policies on the broker under test."""
    return f"http://guest:guest@127.0.0.1:{broker.http_port}"


def assert_same(expected, answers):
    found = amqp_diff.differences(expected, answers)
    assert not found, f"{len(found)} sequences differ; the first:\n" + "\n".join(found[:SHOWN])


def test_greenmq_answers_every_recorded_step_as_rabbitmq_did(greenmq_url, greenmq_management_url):
    expected = amqp_diff.recorded(RECORDING)
    steps = len(next(iter(expected.values())))
    answers = amqp_diff.run_sequences(greenmq_url, [int(seed) for seed in expected], steps, greenmq_management_url)
    assert sum(len(sequence) for sequence in answers.values()) >= 3000
    assert_same(expected, answers)


@pytest.mark.skipif(not os.environ.get("GREENMQ_TEST_AMQP_URL"),
                    reason="needs a reference broker at $GREENMQ_TEST_AMQP_URL")
def test_greenmq_answers_every_step_as_the_reference_broker(greenmq_url, greenmq_management_url, amqp_url):
    """Seeds past the recorded ones; GREENMQ_DIFF_SEQUENCES and GREENMQ_DIFF_FIRST_SEED
    make the run longer or move it. The reference's management API is at
    $GREENMQ_TEST_MANAGEMENT_URL, or beside its AMQP port (amqp_diff.management_url)."""
    first = int(os.environ.get("GREENMQ_DIFF_FIRST_SEED", amqp_diff.FIRST_SEED + amqp_diff.SEQUENCES))
    seeds = range(first, first + int(os.environ.get("GREENMQ_DIFF_SEQUENCES", amqp_diff.SEQUENCES)))
    assert_same(amqp_diff.run_sequences(amqp_url, seeds, management=os.environ.get("GREENMQ_TEST_MANAGEMENT_URL")),
                amqp_diff.run_sequences(greenmq_url, seeds, management=greenmq_management_url))
