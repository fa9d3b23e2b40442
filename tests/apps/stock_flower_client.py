"""A stock Flower ClientApp, written from Flower's public Message API only.

It stands in for a device built on another stack (a phone's Flower client, a
vendor SDK): it knows nothing of fededge, reads the training parameters a
Flower quickstart client reads from the round's config (``lr``,
``local-epochs``) and replies with weights and ``num-examples`` -- no ledger.
Its "training" is a step of weight decay on the weights it received, enough to
send back finite float32 weights of the same names and shapes.

Served on a loopback device by the deployment tests
(``fededge deploy device --client-app tests.apps.stock_flower_client:app``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

#: How many local examples this device says it trained on.
NUM_EXAMPLES = 1000


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Decay the received weights ``local-epochs`` times by ``lr * 0.01`` and send them back."""
    arrays = msg.content["arrays"]
    config = msg.content["config"]
    lr, epochs = float(config["lr"]), int(config["local-epochs"])
    updated = {}
    for name, array in arrays.items():
        value = array.numpy()
        for _ in range(epochs):
            value = value * np.float32(1.0 - 0.01 * lr)
        updated[name] = Array(value.astype(np.float32))
    metrics = MetricRecord({"num-examples": NUM_EXAMPLES, "train_loss": 0.0})
    return Message(RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics}), reply_to=msg)
