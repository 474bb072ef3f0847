"""The artifact store (file:// or s3://), stage leases and atomic writes: the floor every stage stands on."""
