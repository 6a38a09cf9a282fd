"""Generated protobuf code for the fedlego package format (see fedlego.proto)."""
