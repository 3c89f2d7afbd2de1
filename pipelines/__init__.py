"""Pipeline stages of tierhpo: one module per stage, each a pure core plus a thin ``main()``."""
