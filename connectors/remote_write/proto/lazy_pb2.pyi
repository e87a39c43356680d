# mypy: disable-error-code="type-arg"
from connectors.remote_write.proto import remote_v1_pb2 as _remote_v1_pb2
from connectors.remote_write.proto import remote_v2_pb2 as _remote_v2_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteRequestV1(_message.Message):
    __slots__ = ("timeseries", "metadata")
    TIMESERIES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    timeseries: _containers.RepeatedScalarFieldContainer[bytes]
    metadata: _containers.RepeatedCompositeFieldContainer[_remote_v1_pb2.MetricMetadata]
    def __init__(self, timeseries: _Optional[_Iterable[bytes]] = ..., metadata: _Optional[_Iterable[_Union[_remote_v1_pb2.MetricMetadata, _Mapping]]] = ...) -> None: ...

class TimeSeriesV1(_message.Message):
    __slots__ = ("labels", "samples", "exemplars", "histograms")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EXEMPLARS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    samples: _containers.RepeatedCompositeFieldContainer[SampleBits]
    exemplars: _containers.RepeatedCompositeFieldContainer[_remote_v1_pb2.Exemplar]
    histograms: _containers.RepeatedCompositeFieldContainer[_remote_v1_pb2.Histogram]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., samples: _Optional[_Iterable[_Union[SampleBits, _Mapping]]] = ..., exemplars: _Optional[_Iterable[_Union[_remote_v1_pb2.Exemplar, _Mapping]]] = ..., histograms: _Optional[_Iterable[_Union[_remote_v1_pb2.Histogram, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    value: bytes
    def __init__(self, name: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class RequestV2(_message.Message):
    __slots__ = ("symbols", "timeseries")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    TIMESERIES_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[bytes]
    timeseries: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, symbols: _Optional[_Iterable[bytes]] = ..., timeseries: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TimeSeriesV2(_message.Message):
    __slots__ = ("labels_refs", "samples", "histograms", "exemplars", "metadata", "created_timestamp")
    LABELS_REFS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    EXEMPLARS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    labels_refs: _containers.RepeatedScalarFieldContainer[int]
    samples: _containers.RepeatedCompositeFieldContainer[SampleBits]
    histograms: _containers.RepeatedCompositeFieldContainer[_remote_v2_pb2.Histogram]
    exemplars: _containers.RepeatedCompositeFieldContainer[_remote_v2_pb2.Exemplar]
    metadata: _remote_v2_pb2.Metadata
    created_timestamp: int
    def __init__(self, labels_refs: _Optional[_Iterable[int]] = ..., samples: _Optional[_Iterable[_Union[SampleBits, _Mapping]]] = ..., histograms: _Optional[_Iterable[_Union[_remote_v2_pb2.Histogram, _Mapping]]] = ..., exemplars: _Optional[_Iterable[_Union[_remote_v2_pb2.Exemplar, _Mapping]]] = ..., metadata: _Optional[_Union[_remote_v2_pb2.Metadata, _Mapping]] = ..., created_timestamp: _Optional[int] = ...) -> None: ...

class SampleBits(_message.Message):
    __slots__ = ("value", "timestamp")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    value: int
    timestamp: int
    def __init__(self, value: _Optional[int] = ..., timestamp: _Optional[int] = ...) -> None: ...
