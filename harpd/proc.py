"""``from harpd.proc import procedure, streaming_procedure, Result`` for
procedure modules written for the original harpd; see
:mod:`txharp.daemon.procedures`."""
from txharp.daemon.procedures import (
    Procedure,
    Result,
    StreamingProcedure,
    procedure,
    streaming_procedure,
)

__all__ = ["Procedure", "Result", "StreamingProcedure", "procedure", "streaming_procedure"]
