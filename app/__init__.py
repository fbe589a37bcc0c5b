"""The Gradio front end. `app.config` holds the settings, `app.state` the server's state; the tab
handlers (`app.detect`, `app.queries`, `app.review`, `app.train`) are plain functions taking the
state first, and `app.ui` binds and wires them."""
