"""Ground floor: shared plumbing (errors, paths, atomic writes, config, provenance). Imports nothing else of tierhpo."""
