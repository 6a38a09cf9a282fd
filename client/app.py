"""The fedlego ClientApp: one handler per phase message, each thin over ``SiteRuntime``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedlego.client.runtime import SiteRuntime, evaluable_models
from fedlego.common.data.sitefolder import read_site_folder
from fedlego.common.federation import FederationSettings, simulated_site
from fedlego.common.lego import LegoBlock, LegoMerge
from fedlego.common.packaging import (
    block_from_package,
    model_from_package,
    package_task,
    parse_block_package,
    parse_model_package,
    serialize,
)
from fedlego.common.privacy import privacy_config_from_json
from fedlego.common.signing import COORDINATOR, load_public_key, load_signing_key, sign_package, verify_signature
from fedlego.common.tasks import task_from_dict
from fedlego.common.training import TrainConfig
from fedlego.common.workflow import ModelConfig
from fedlego.messages import Payload, from_records, to_records

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

app = ClientApp()
_SITES: dict[str, SiteRuntime] = {}


def site_for(context: Context) -> SiteRuntime:
    """This node's site: its data folder (deployment) or its share of the scenario (simulation)."""
    key = json.dumps([dict(context.run_config), dict(context.node_config)], sort_keys=True, default=str)
    if key not in _SITES:
        settings = FederationSettings.from_run_config(context.run_config)
        if "data-dir" in context.node_config:
            data = read_site_folder(Path(str(context.node_config["data-dir"])), salt=f"fedlego-roles-{settings.seed}")
            _SITES[key] = SiteRuntime(data.name, data.dataset, data.roles)
        else:
            _SITES[key] = simulated_site(settings, int(context.node_config["partition-id"]))
    return _SITES[key]


def signing_key_for(context: Context):
    """The site's package signing key (node config ``signing-key``), if it has one."""
    path = context.node_config.get("signing-key")
    return load_signing_key(Path(str(path))) if path else None


def check_coordinator_signature(package, context: Context, run_id: str) -> None:
    """With node config ``coordinator-public-key``, refuse models the coordinator did not sign."""
    path = context.node_config.get("coordinator-public-key")
    if path:
        key = load_public_key(Path(str(path)))
        verify_signature(package, {COORDINATOR: key}, run_id, expected_signer=COORDINATOR)


def round_reply(message: Message, result) -> Message:
    """A federated round's answer: the new weights, the training patients and the validation
    loss of the model as received."""
    metrics = {"num-examples": float(result.n_train), "validation-loss-before": result.validation_loss_before}
    return reply(message, Payload(arrays=result.state, metrics=metrics))


def reply(message: Message, payload: Payload) -> Message:
    """A reply carrying a payload."""
    return Message(content=to_records(payload), reply_to=message)


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    """What this site holds: modalities and counts, never patient data."""
    return reply(message, Payload(config={"description": json.dumps(site_for(context).describe())}))


@app.train("block")
def train_block(message: Message, context: Context) -> Message:
    """Train one block per held modality; return the packages."""
    config = from_records(message.content).config
    site = site_for(context)
    packages = site.train_blocks(
        task_from_dict(json.loads(config["task"])),
        ModelConfig(**json.loads(config["model"])),
        TrainConfig(**json.loads(config["training"])),
        str(config["run-id"]),
        json.loads(config["preprocessing"]),
        privacy=privacy_config_from_json(config.get("privacy")),
    )
    key = signing_key_for(context)
    if key is not None:
        for package in packages.values():
            sign_package(package, key, site.name)
    return reply(message, Payload(config={f"package.{m}": serialize(p) for m, p in packages.items()}))


@app.train("blockround")
def block_round(message: Message, context: Context) -> Message:
    """One FedAvg round on a shared modality's block."""
    config = from_records(message.content).config
    package = parse_block_package(config["package"], "block round")
    check_coordinator_signature(package, context, package.run_id)
    block: LegoBlock = block_from_package(package)
    training = FederationSettings.from_run_config(context.run_config).round_training(int(config["epochs"]))
    result = site_for(context).block_round(
        block, task_from_dict(json.loads(config["task"])), training, float(config["proximal-mu"])
    )
    return round_reply(message, result)


@app.train("fuse")
def fuse_round(message: Message, context: Context) -> Message:
    """One federated LegoFuse round; the full model arrives once, then only fusion parameters."""
    incoming = from_records(message.content)
    config = incoming.config
    if "package" in config:
        context.state["fuse"] = ConfigRecord({"package": config["package"], "run-id": config["run-id"]})
    if "fuse" not in context.state or context.state["fuse"]["run-id"] != config["run-id"]:
        raise RuntimeError("this site has not received the fused model of this run (restarted mid-fuse?)")
    package = parse_model_package(context.state["fuse"]["package"], "fused model")
    check_coordinator_signature(package, context, str(config["run-id"]))
    model = model_from_package(package)
    model.load_state_dict(incoming.arrays or {}, strict=False)
    training = FederationSettings.from_run_config(context.run_config).round_training(int(config["epochs"]))
    result = site_for(context).fuse_round(
        model, task_from_dict(json.loads(config["task"])), training, float(config["proximal-mu"])
    )
    return round_reply(message, result)


@app.evaluate("models")
def evaluate_models(message: Message, context: Context) -> Message:
    """Evaluate the model and each of its blocks on this site's test patients."""
    config = from_records(message.content).config
    package = parse_model_package(config["model"], "model to evaluate")
    check_coordinator_signature(package, context, package.run_id)
    model = model_from_package(package)
    if isinstance(model, LegoMerge):
        models = evaluable_models(dict(model.blocks), model, None)
    else:
        models = evaluable_models({}, None, model)
    results = site_for(context).evaluate(models, package_task(package.blocks[0]))
    return reply(message, Payload(config={"results": json.dumps(results)}))
