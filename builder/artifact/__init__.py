"""Lab artifacts: pack a bundle into an OCI layout, sign, verify, unpack, push and pull."""
