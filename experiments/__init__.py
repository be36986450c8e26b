"""One study per file; each states its claim and writes results.json and a PNG."""
