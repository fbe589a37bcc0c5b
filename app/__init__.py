"""The Gradio front end. Handlers are plain functions (see `app.detect`); `app.ui` wires them."""
