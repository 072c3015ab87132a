"""The eMIGM Explorer (Gradio): `build_demo(Engine(...))`. Importing this package loads no model."""
