from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class LatentContract(_message.Message):
    __slots__ = ("channels", "dim", "n_outputs", "task", "seed")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    N_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    channels: int
    dim: int
    n_outputs: int
    task: str
    seed: int
    def __init__(self, channels: _Optional[int] = ..., dim: _Optional[int] = ..., n_outputs: _Optional[int] = ..., task: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("signer", "algorithm", "value")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    signer: str
    algorithm: str
    value: bytes
    def __init__(self, signer: _Optional[str] = ..., algorithm: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class BlockPackage(_message.Message):
    __slots__ = ("schema_version", "modality", "site", "run_id", "architecture_json", "contract", "tensors", "metrics", "n_samples", "preprocessing_json", "task_json", "content_hash", "signature")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    modality: str
    site: str
    run_id: str
    architecture_json: str
    contract: LatentContract
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: _containers.ScalarMap[str, float]
    n_samples: int
    preprocessing_json: str
    task_json: str
    content_hash: bytes
    signature: Signature
    def __init__(self, schema_version: _Optional[int] = ..., modality: _Optional[str] = ..., site: _Optional[str] = ..., run_id: _Optional[str] = ..., architecture_json: _Optional[str] = ..., contract: _Optional[_Union[LatentContract, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., n_samples: _Optional[int] = ..., preprocessing_json: _Optional[str] = ..., task_json: _Optional[str] = ..., content_hash: _Optional[bytes] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ...) -> None: ...

class ModelPackage(_message.Message):
    __slots__ = ("schema_version", "kind", "run_id", "blocks", "recipe_json", "tensors", "metrics", "content_hash", "signature")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RECIPE_JSON_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    kind: str
    run_id: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockPackage]
    recipe_json: str
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    metrics: _containers.ScalarMap[str, float]
    content_hash: bytes
    signature: Signature
    def __init__(self, schema_version: _Optional[int] = ..., kind: _Optional[str] = ..., run_id: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockPackage, _Mapping]]] = ..., recipe_json: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., content_hash: _Optional[bytes] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ...) -> None: ...
