"""The Gradio front end. `app.config` holds the settings, `app.state` the server's state; the tab
handlers (`app.detect`, `app.queries`, `app.review` with the review session of `app.flow` and the
browser uploads and downloads of `app.transfer`, `app.train`) are plain functions taking the state
first; `app.binding` binds them, `app.ui` wires them. `app.access` says who may change data,
`app.upload` hands uploaded images to `core.images` undecoded, `app.fiftyone_app` mounts the
guarded FiftyOne App."""
