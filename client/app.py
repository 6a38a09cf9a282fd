"""The fedlego ClientApp: one handler per phase message, each thin over ``SiteRuntime``."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedlego.client.runtime import SiteRuntime, evaluable_models, outgoing_reason
from fedlego.client.simulated import simulated_site
from fedlego.common.audit_head import CONFIG_KEY as AUDIT_HEAD_KEY
from fedlego.common.audit_head import AuditHead, keep
from fedlego.common.config import RunConfig
from fedlego.common.data.errors import SiteDataError
from fedlego.common.data.sitefolder import read_site_folder
from fedlego.common.disclosure import DEFAULT_MIN_CELL
from fedlego.common.lego import LegoBlock, LegoMerge
from fedlego.common.packaging import (
    block_from_package,
    model_from_package,
    package_task,
    parse_block_package,
    parse_model_package,
    serialize,
)
from fedlego.common.protocol import (
    BlockReply,
    BlockRequest,
    DescribeReply,
    DescribeRequest,
    EvaluateReply,
    EvaluateRequest,
    MessageType,
    Payload,
    ProtocolError,
    RoundRequest,
)
from fedlego.common.signing import COORDINATOR, load_public_key, load_signing_key, sign_package, verify_signature
from fedlego.messages import from_records, to_records

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

app = ClientApp()
_SITES: dict[str, SiteRuntime] = {}


def data_errors_stay_home(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A handler whose data errors reach the coordinator as file and column only: Flower sends an
    exception's text to the coordinator, and a ``SiteDataError`` quotes patient ids and values (the
    whole error goes to the site's log, see ``outgoing_reason``)."""

    @functools.wraps(handler)
    def guarded(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except SiteDataError as error:
            raise RuntimeError(outgoing_reason(error)) from None

    return guarded


def site_for(context: Context) -> SiteRuntime:
    """This node's site: its data folder (deployment) or its share of the scenario (simulation)."""
    key = json.dumps([dict(context.run_config), dict(context.node_config)], sort_keys=True, default=str)
    if key not in _SITES:
        settings = RunConfig.from_flat(context.run_config)
        if "data-dir" in context.node_config:
            data = read_site_folder(Path(str(context.node_config["data-dir"])))
            # a hospital's own floor: `fedlego site --min-cell`, else site.json's, else the default;
            # the coordinator's run config can raise it, never lower it
            floor = int(context.node_config.get("min-cell", data.min_cell or DEFAULT_MIN_CELL))
            site = SiteRuntime.from_site_data(replace(data, min_cell=floor), settings.disclosure.min_cell)
            if "schema" in context.node_config:
                site.check_schema(data, Path(str(context.node_config["schema"])))
            _SITES[key] = site
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


def received(message: Message, context: Context) -> Payload:
    """A request's payload; with node config ``audit-dir`` the coordinator's audit head it carries
    is kept there first (checked against ``coordinator-public-key`` when the site has it: a head
    that is missing, unsigned or not the coordinator's refuses the message)."""
    payload = from_records(message.content)
    folder = context.node_config.get("audit-dir")
    if not folder:
        return payload
    key_path = context.node_config.get("coordinator-public-key")
    raw = payload.config.get(AUDIT_HEAD_KEY)
    if raw is None:
        if key_path:
            raise ProtocolError("the request carries no audit head (this site keeps the coordinator's heads)")
        return payload
    try:
        head = AuditHead.from_dict(json.loads(str(raw)))
        if key_path:
            head.verify(load_public_key(Path(str(key_path))))
    except (json.JSONDecodeError, ValueError) as error:
        raise ProtocolError(f"audit head refused: {error}") from error
    keep(head, Path(str(folder)), message.metadata.message_type)
    return payload


def reply(message: Message, answer) -> Message:
    """A reply carrying a typed protocol answer."""
    return Message(content=to_records(answer.to_payload()), reply_to=message)


@app.query(MessageType.DESCRIBE.action)
@data_errors_stay_home
def describe(message: Message, context: Context) -> Message:
    """What this site holds: modalities and counts, never patient data; when asked, also the
    preprocessing statistics its block packages would carry (to be pooled across sites)."""
    request = DescribeRequest.from_payload(received(message, context))
    site = site_for(context)
    states = {} if request.preprocessing is None else site.released_preprocessing(request.preprocessing)[0]
    return reply(message, DescribeReply(site.describe(), states))


@app.train(MessageType.BLOCK.action)
@data_errors_stay_home
def train_block(message: Message, context: Context) -> Message:
    """Train one block per held modality; return the packages."""
    request = BlockRequest.from_payload(received(message, context))
    site = site_for(context)
    results = site.train_blocks(
        request.task,
        request.model,
        request.training,
        request.run_id,
        request.preprocessing,
        request.privacy,
        request.pooled,
    )
    key = signing_key_for(context)
    if key is not None:
        for package in results.packages.values():
            sign_package(package, key, site.name)
    packages = {m: serialize(p) for m, p in results.packages.items()}
    return reply(message, BlockReply(packages, results.errors))


@app.train(MessageType.BLOCK_ROUND.action)
@data_errors_stay_home
def block_round(message: Message, context: Context) -> Message:
    """One FedAvg round on a shared modality's block."""
    request = RoundRequest.from_payload(received(message, context), MessageType.BLOCK_ROUND)
    if request.package is None:
        raise ValueError("block round request without the block package")
    package = parse_block_package(request.package, "block round")
    check_coordinator_signature(package, context, package.run_id)
    block: LegoBlock = block_from_package(package)
    result = site_for(context).block_round(block, request.task, request.training, request.proximal_mu)
    return reply(message, result)


@app.train(MessageType.FUSE_ROUND.action)
@data_errors_stay_home
def fuse_round(message: Message, context: Context) -> Message:
    """One federated LegoFuse round; the full model arrives once, then only fusion parameters."""
    request = RoundRequest.from_payload(received(message, context), MessageType.FUSE_ROUND)
    if request.package is not None:
        context.state["fuse"] = ConfigRecord({"package": request.package, "run-id": request.run_id})
    if "fuse" not in context.state or context.state["fuse"]["run-id"] != request.run_id:
        raise RuntimeError("this site has not received the fused model of this run (restarted mid-fuse?)")
    package = parse_model_package(context.state["fuse"]["package"], "fused model")
    check_coordinator_signature(package, context, request.run_id)
    model = model_from_package(package)
    model.load_state_dict(request.state or {}, strict=False)
    result = site_for(context).fuse_round(model, request.task, request.training, request.proximal_mu)
    return reply(message, result)


@app.evaluate(MessageType.EVALUATE.action)
@data_errors_stay_home
def evaluate_models(message: Message, context: Context) -> Message:
    """Evaluate the model and each of its blocks on this site's test patients."""
    request = EvaluateRequest.from_payload(received(message, context))
    package = parse_model_package(request.model, "model to evaluate")
    check_coordinator_signature(package, context, package.run_id)
    model = model_from_package(package)
    if isinstance(model, LegoMerge):
        models = evaluable_models(dict(model.blocks), model, None)
    else:
        models = evaluable_models({}, None, model)
    site = site_for(context)
    results = site.evaluate(models, package_task(package.blocks[0]))
    return reply(message, EvaluateReply(results, dict(site.evaluation_errors), dict(site.evaluation_curves)))
