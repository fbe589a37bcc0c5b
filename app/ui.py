"""Builds the Gradio Blocks app from the tab handlers. No logic lives here, only wiring.

`build_app(state)` binds every handler to the server's `app.state.AppState` (handlers take it as
their first argument). Every main event has a stable ``api_name`` so scripts can drive the app
with `gradio_client`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
from gradio_image_annotation import image_annotator

from app import flow, queries, review, train, transfer
from app.access import access_note, may_change_data, needs_sign_in, user_name_in
from app.binding import bind, database_errors, with_labels
from app.detect import DETECTION_HEADERS, detect, detect_batch, model_labels
from app.fiftyone_app import mount_fiftyone
from app.state import AppState
from app.upload import UploadedImage
from core.hybrid import HYBRID
from core.loading import ASSETS_DIR
from training.config import SUGGESTED_LR

EXAMPLES_DIR = ASSETS_DIR / "examples"
# Review keys: they press the Review tab's buttons, only while it is shown and never while typing.
KEYBOARD = """<script>
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
  const editor = target && target.closest && target.closest("#review-editor");
  if (editor && /^[1-9]$/.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
    // A digit relabels the editor's selected box: the editor's own "e" opens its label dialog, the
    // digit's class is typed into it and Enter confirms it, as a user would.
    const key = document.querySelectorAll("#review-keys [data-label]")[Number(event.key) - 1];
    if (!key) return;
    event.preventDefault();
    target.dispatchEvent(new KeyboardEvent("keydown", {key: "e", bubbles: true}));
    setTimeout(() => {
      const input = editor.querySelector("input[type=text], input:not([type])");
      if (!input) return;  // no box selected
      input.focus();
      Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(input, key.dataset.label);
      input.dispatchEvent(new InputEvent("input", {bubbles: true, inputType: "insertText", data: key.dataset.label}));
      // Enter in the dialog's label box picks the typed class and confirms the dialog.
      setTimeout(() => input.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter", bubbles: true})), 30);
    }, 50);
    return;
  }
  const keys = {"Enter": "review-accept", "s": "review-skip", "n": "review-next", "u": "review-undo"};
  let id = keys[event.key];
  if ((event.ctrlKey || event.metaKey) && event.key === "s") id = "review-save";
  else if (event.ctrlKey || event.metaKey || event.altKey) return;
  const button = id && document.getElementById(id);
  if (!button || button.offsetParent === null) return;  // the Review tab is not shown
  event.preventDefault();
  button.click();
});
</script>"""
MAX_UPLOAD = "50mb"


def _examples() -> list[str]:
    """Shapes first (what the bundled model knows), then the photos."""
    paths = sorted(Path(EXAMPLES_DIR).glob("*.*"), key=lambda p: (not p.name.startswith("shapes"), p.name))
    return [str(path) for path in paths if path.suffix.lower() in (".jpg", ".png")]


def _detect_tab(state: AppState, model, threshold, size, model_queue: dict):
    with gr.Row():
        with gr.Column():
            image = UploadedImage(label="Image", type="filepath", image_mode=None, elem_id="detect-input")
            classes = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                                  label="Only these classes (empty: all)", elem_id="detect-classes")
            with gr.Row():
                run = gr.Button("Detect", variant="primary", elem_id="detect-button")
                send = gr.Button("Send to review", elem_id="send-to-review")
            gr.Examples(_examples(), inputs=[image], label="Examples: shapes (bundled model) and photos")
        with gr.Column():
            annotated = gr.Image(label="Detections", type="numpy", interactive=False, elem_id="detect-output")
            status = gr.Markdown(elem_id="detect-status")
            table = gr.Dataframe(headers=DETECTION_HEADERS, label="Detections", interactive=False,
                                 elem_id="detect-table")
    with gr.Accordion("Several images at once", open=False):
        files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="batch-input")
        with gr.Row():
            run_batch = gr.Button("Detect all", elem_id="batch-button")
            send_all = gr.Button("Send all to review", elem_id="send-all-to-review")
        gallery = gr.Gallery(label="Annotated", columns=4, height="auto", elem_id="batch-gallery")
        batch_status = gr.Markdown()
        batch_table = gr.Dataframe(headers=["file", *DETECTION_HEADERS], interactive=False, label="All detections")
    run.click(bind(detect, state), inputs=[image, model, threshold, size, classes], outputs=[annotated, table, status],
              api_name="detect", **model_queue)
    run_batch.click(bind(detect_batch, state), inputs=[files, model, threshold, size, classes],
                    outputs=[gallery, batch_table, batch_status], api_name="detect_batch", **model_queue)
    classes.focus(bind(model_labels, state), inputs=[model], outputs=[classes], api_name=False)

    def pick(files, evt: gr.SelectData):
        """A gallery click makes that image the current one (for Queries and review)."""
        return getattr(files[evt.index], "name", files[evt.index])

    gallery.select(pick, inputs=[files], outputs=[image], api_name=False)
    return image, files, send, send_all, batch_status


def _queries_tab(state: AppState, image, files, model, threshold, size, model_queue: dict):
    key = gr.Textbox(visible=False, elem_id="queries-key")
    with gr.Row():
        run = gr.Button("Inspect queries of the current image", variant="primary", elem_id="queries-button")
        query_status = gr.Markdown(elem_id="queries-status")
    with gr.Row():
        with gr.Column(scale=2):
            overlay = gr.Image(label="Selected query: box and decoder cross-attention", type="numpy",
                               interactive=False, height=520, elem_id="query-overlay")
            details = gr.Markdown(elem_id="query-details")
        with gr.Column(scale=1):
            grid = gr.Image(label="All queries (click one)", type="numpy", interactive=False, height=460,
                            elem_id="query-grid")
            gr.Markdown("Colour = top class, brightness = score, white frame = passes the threshold, "
                        "yellow = selected. Dark cells are queries predicting nothing here. A model whose "
                        "fine-tune chose duplicate removal drops a query that repeats a better one of its "
                        "class: the table says 'duplicate of N'. One that chose the test-time flip fuses each "
                        "query with its partner in the mirrored image: the query's details say which.")
            with gr.Row():
                query = gr.Number(label="Query", value=0, precision=0, minimum=0, elem_id="query-index")
                layer = gr.Dropdown(choices=[], label="Decoder layer", elem_id="query-layer")
                head = gr.Dropdown(choices=[queries.MEAN_HEADS], value=queries.MEAN_HEADS, label="Head",
                                   elem_id="query-head")
            promote = gr.Button("Promote to label (add to this image's review)", elem_id="promote-button")
    table = gr.Dataframe(headers=queries.QUERY_HEADERS, label="Every query (click a header to sort, a row to inspect)",
                         interactive=False, elem_id="queries-table", max_height=420)
    with gr.Accordion("Slot specialization over a dataset (DETR paper, Fig. 7)", open=False):
        gr.Markdown("Where each chosen query slot puts its boxes over many images: the images of the "
                    "'Several images' upload, else the review dataset's images.")
        slots = gr.Textbox(label="Slots", placeholder="0-19 (default), or e.g. 0-9, 42", elem_id="slots")
        plot_button = gr.Button("Plot slots", elem_id="slots-button")
        plot = gr.Plot(label="Box centres per slot", elem_id="slots-plot")

    attention = bind(queries.query_attention, state)
    run.click(bind(queries.run_queries, state), inputs=[image, model, size, threshold],
              outputs=[key, table, grid, layer, head, query_status], api_name="queries", **model_queue).then(
        attention, inputs=[key, query, layer, head, threshold], outputs=[overlay, grid, details], api_name=False)
    show = dict(fn=attention, inputs=[key, query, layer, head, threshold], outputs=[overlay, grid, details])
    query.submit(**show, api_name="query_attention")
    layer.input(**show, api_name=False)
    head.input(**show, api_name=False)
    grid.select(bind(queries.grid_select, state), inputs=[key], outputs=[query], api_name=False).then(**show,
                                                                                                 api_name=False)
    table.select(queries.table_select, outputs=[query], api_name=False).then(**show, api_name=False)

    def slot_plot(files, model_name, slots_text, size):
        """Fig. 7 over the multi-image upload, else over (up to 500 of) the review dataset's images."""
        with database_errors():
            images = [getattr(f, "name", f) for f in files] if files else state.store.dataset.limit(500).values(
                "filepath")
        return queries.slot_specialization(state, images, model_name, slots_text, size)

    plot_button.click(slot_plot, inputs=[files, model, slots, size], outputs=[plot], api_name="slot_plot",
                      **model_queue)
    return key, query, promote


def _review_tab():
    with gr.Row():
        with gr.Column(scale=3):
            editor = image_annotator(label="Boxes: drag to move or resize, draw to add, select + Delete to remove, "
                                           "double-click to change the label", label_list=[], sources=[],
                                     elem_id="review-editor", height=560)
        with gr.Column(scale=1):
            status = gr.Markdown(elem_id="review-status")
            sample_id = gr.Textbox(label="Sample", interactive=False, elem_id="review-sample")
            revision = gr.Number(label="Revision", value=0, precision=0, interactive=False, elem_id="review-revision")
            reviewer = gr.Textbox(label="Reviewer", value="reviewer", elem_id="review-reviewer")
            accept = gr.Button("Accept and next (Enter)", variant="primary", elem_id="review-accept")
            with gr.Row():
                save = gr.Button("Save (Ctrl+S)", elem_id="review-save")
                skip = gr.Button("Skip (S)", elem_id="review-skip")
            with gr.Row():
                undo = gr.Button("Undo last save (U)", elem_id="review-undo")
                next_button = gr.Button("Next to review (N)", elem_id="review-next")
            queue = gr.Dropdown(choices=[(flow.DEFAULT_QUEUE, "")], value="", label="Queue (or a saved FiftyOne view)",
                                elem_id="review-queue")
            counts = gr.Markdown(elem_id="review-counts")
            progress = gr.Markdown(elem_id="review-progress")
            gr.Markdown("Keys (not while typing): Enter accept and next, S skip, N next, U undo, Ctrl+S save; "
                        "in the editor (click it first), Delete removes the selected box.")
            label_keys = gr.HTML(elem_id="review-keys")
    strip_ids = gr.State([])
    session = gr.State(flow.Session())
    strip = gr.Gallery(label="Next in the queue (top confidence); click one to open it", columns=10, height=150,
                       allow_preview=False, elem_id="review-strip")
    with gr.Accordion("Upload to review, download as COCO", open=False):
        with gr.Row():
            upload = gr.File(file_count="multiple", file_types=["image", ".zip"], elem_id="review-upload",
                             label="Images, a zip of images, or a zip of a COCO dataset (annotations JSON + images)")
            with gr.Column():
                import_upload = gr.Button("Add to the review dataset", elem_id="review-import-upload")
                upload_status = gr.Markdown(elem_id="review-upload-status")
        with gr.Row():
            since = gr.Textbox(label="Reviewed since (UTC date, optional)", placeholder="2026-12-01")
            by = gr.Textbox(label="By reviewer (optional)")
            download = gr.Button("Download reviewed samples as COCO zip", elem_id="review-download")
            archive = gr.File(label="COCO zip", interactive=False, elem_id="review-archive")
    with gr.Accordion("Import and export on the server (under DATA/imports, DATA/exports)", open=False):
        with gr.Row():
            folder = gr.Textbox(label="Folder of images (on the server)")
            import_folder = gr.Button("Import folder")
        with gr.Row():
            coco = gr.Textbox(label="COCO annotations JSON (or its folder)")
            coco_images = gr.Textbox(label="Image folder (default: the JSON's folder)")
            import_coco = gr.Button("Import COCO")
        with gr.Row():
            export_dir = gr.Textbox(label="Export reviewed samples as COCO into (an empty folder)")
            export = gr.Button("Export COCO")
        io_status = gr.Markdown()
    with gr.Accordion("Evaluate predictions against reviewed truth", open=False):
        evaluate = gr.Button("Evaluate (FiftyOne, COCO mAP)", elem_id="review-evaluate")
        eval_summary = gr.Markdown(elem_id="eval-summary")
        with gr.Row():
            per_class = gr.Dataframe(headers=["class", "AP"], interactive=False, label="Per-class AP")
            pr_plot = gr.Plot(label="Precision-recall")
    with gr.Row():
        open_app = gr.Button("Open in FiftyOne", elem_id="open-fiftyone")
        fiftyone_link = gr.Markdown()
    return dict(editor=editor, status=status, sample_id=sample_id, revision=revision, reviewer=reviewer, save=save,
                accept=accept, skip=skip, progress=progress, queue=queue, label_keys=label_keys, strip=strip, strip_ids=strip_ids, session=session,
                undo=undo, next=next_button, counts=counts, folder=folder, import_folder=import_folder, coco=coco,
                coco_images=coco_images, import_coco=import_coco, export_dir=export_dir, export=export,
                io_status=io_status, upload=upload, import_upload=import_upload, upload_status=upload_status,
                since=since, by=by, download=download, archive=archive, evaluate=evaluate, eval_summary=eval_summary, per_class=per_class,
                pr_plot=pr_plot, open_app=open_app, fiftyone_link=fiftyone_link)


def _train_tab(state: AppState, model):
    summary = gr.Markdown(elem_id="train-summary")
    with gr.Row():
        epochs = gr.Slider(1, 200, value=train.DEFAULTS.train.epochs, step=1,
                           label="Epochs at most (early stopping on validation AP)")
        trainable = gr.Dropdown(list(SUGGESTED_LR), value=train.DEFAULTS.train.trainable, elem_id="train-trainable",
                                label="What trains (last_layer: best with tens of images; all: with hundreds)")
        lr = gr.Number(value=train.DEFAULTS.train.lr, label="Learning rate (backbone: a tenth)", minimum=1e-6,
                       maximum=1e-2)
        hybrid = gr.Dropdown(list(HYBRID), value=train.DEFAULTS.hybrid.method, elem_id="train-hybrid",
                             label="One-to-many training (Co-DETR / H-DETR; no cost at inference)")
    with gr.Row():
        start = gr.Button("Fine-tune on reviewed data", variant="primary", elem_id="train-start",
                          interactive=not state.config.public_space_without_login)
        cancel = gr.Button("Cancel", elem_id="train-cancel")
    status = gr.Markdown(elem_id="train-status")
    plot = gr.Plot(label="Loss and validation AP")
    table = gr.Dataframe(headers=["class", "AP before", "AP after", "change"], interactive=False,
                         label="Validation AP per class, base model vs new version", elem_id="train-table")
    new_version = gr.Textbox(label="New version", interactive=False, elem_id="train-version")
    use = gr.Button("Use this model", elem_id="train-use")
    gr.Markdown("### Model versions")
    versions = gr.Dataframe(headers=train.VERSION_HEADERS, interactive=False, elem_id="train-versions")
    with gr.Row():
        picked = gr.Textbox(label="Version (click a row)", elem_id="train-picked")
        switch = gr.Button("Switch to")
        rollback = gr.Button("Roll back (to its parent)")

    def select_model(name):
        return gr.update(choices=state.model_choices(), value=name)

    refresh = dict(fn=lambda: (train.training_summary(state), train.versions_table(state)),
                   outputs=[summary, versions], api_name=False)
    trainable.change(SUGGESTED_LR.get, inputs=[trainable], outputs=[lr], api_name=False)
    hybrid.change(train.trainable_for_hybrid, inputs=[hybrid, trainable], outputs=[trainable], api_name=False)
    # The fine-tune runs beside detection (its own thread and group; on ZeroGPU its own GPU calls), never
    # in the model group: it would block detection for minutes. A second request waits for the first.
    start.click(needs_sign_in(bind(train.start_finetune, state), state.config, training=True),
                inputs=[model, epochs, lr, trainable, hybrid], outputs=[status, plot, table, new_version],
                api_name="finetune", concurrency_id="train", concurrency_limit=1).then(**refresh)
    cancel.click(needs_sign_in(bind(train.cancel_finetune, state), state.config), outputs=[status],
                 api_name="cancel_finetune")
    use.click(select_model, inputs=[new_version], outputs=[model], api_name=False)
    def pick_version(evt: gr.SelectData):
        return evt.row_value[0]

    versions.select(pick_version, outputs=[picked], api_name=False)
    switch.click(select_model, inputs=[picked], outputs=[model], api_name=False)
    rollback.click(lambda name: select_model(train.rollback_target(state, name)), inputs=[picked], outputs=[model],
                   api_name=False)
    return refresh


def build_app(state: AppState) -> gr.Blocks:
    """The whole app on ``state``; `app.py` launches it, tests drive it through `gradio_client` or a browser."""
    config = state.config
    # Events that run a model share one concurrency group, so two of them never hold the model (and
    # its memory) at once: config.model_concurrency of them run together (default 1).
    model_queue = {"concurrency_id": "model", "concurrency_limit": config.model_concurrency}

    def writes(handler, name_argument=None):
        """``handler`` bound to the state, refused to visitors who may not change data."""
        return needs_sign_in(bind(handler, state), config, name_argument)

    def editor(handler):
        return with_labels(bind(handler, state), state)

    with gr.Blocks(title="DETR Studio") as demo:
        gr.Markdown("# DETR Studio\nSee inside DETR-family detectors, review their output into FiftyOne.")
        if config.on_space and config.oauth_client_id:  # hf_oauth: true; off Spaces it would break local runs
            gr.LoginButton()
        access = gr.Markdown(elem_id="access-note")
        with gr.Row():
            model = gr.Dropdown(choices=state.model_choices(), value=config.model, label="Model",
                                allow_custom_value=True,
                                info="A hub id, a local save_pretrained directory, or 'bundled'.", scale=2)
            threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Score threshold", scale=1)
            size = gr.Slider(0, 1344, value=0, step=32, label="Processing size (shortest edge, px)", scale=1,
                             info="0 = the model's own (800 for DETR-R50, 224 for bundled); 512 is ~3x faster on CPU.")
        with gr.Tab("Detect"):
            image, files, send, send_all, batch_status = _detect_tab(state, model, threshold, size, model_queue)
        with gr.Tab("Queries"):
            key, query, promote = _queries_tab(state, image, files, model, threshold, size, model_queue)
        with gr.Tab("Review"):
            r = _review_tab()
        with gr.Tab("Train") as train_tab:
            refresh_train = _train_tab(state, model)
        train_tab.select(**refresh_train)
        with gr.Tab("FiftyOne") as fiftyone_tab:
            fiftyone_links = gr.Markdown(elem_id="fiftyone-links")
            fiftyone_frame = gr.HTML(elem_id="fiftyone-frame")
        fiftyone_tab.select(bind(review.fiftyone_frame, state), outputs=[fiftyone_links, fiftyone_frame],
                            api_name=False)

        loaded = [r["editor"], r["sample_id"], r["revision"], r["status"]]
        counts = dict(fn=bind(lambda state: (review.review_counts(state), review.label_keys(state)), state),
                      outputs=[r["counts"], r["label_keys"]], api_name=False)
        send.click(needs_sign_in(editor(review.send_to_review), config), inputs=[image, model, threshold, size],
                   outputs=loaded, api_name="send_to_review", **model_queue).then(**counts)
        promote.click(needs_sign_in(editor(review.promote_query), config),
                      inputs=[key, query, r["sample_id"], r["editor"], threshold], outputs=loaded,
                      api_name="promote_query")
        r["save"].click(needs_sign_in(editor(review.save_review), config, "reviewer"),
                        inputs=[r["sample_id"], r["revision"], r["editor"], r["reviewer"], threshold],
                        outputs=loaded, api_name="save_review").then(**counts)
        r["undo"].click(needs_sign_in(editor(review.undo_review), config, "reviewer"),
                        inputs=[r["sample_id"], r["revision"], r["reviewer"], threshold], outputs=loaded,
                        api_name="undo_review")
        strip = dict(fn=bind(flow.queue_strip, state), inputs=[r["sample_id"], r["session"]],
                     outputs=[r["strip"], r["strip_ids"], r["progress"]], api_name=False)
        r["next"].click(editor(flow.next_in_queue), inputs=[r["sample_id"], threshold, r["session"]],
                        outputs=[*loaded, r["session"]], api_name="next_to_review").then(**counts).then(**strip)
        r["queue"].focus(bind(lambda state: gr.update(choices=flow.queue_choices(state)), state),
                         outputs=[r["queue"]], api_name=False)
        r["queue"].input(editor(flow.choose_queue), inputs=[r["queue"], threshold, r["session"]],
                         outputs=[*loaded, r["session"]], api_name="choose_queue").then(**counts).then(**strip)
        r["accept"].click(needs_sign_in(editor(flow.accept_and_next), config, "reviewer"),
                          inputs=[r["sample_id"], r["revision"], r["reviewer"], threshold, r["session"]],
                          outputs=[*loaded, r["session"]], api_name="accept_and_next").then(**counts).then(**strip)
        r["skip"].click(editor(flow.skip), inputs=[r["sample_id"], threshold, r["session"]],
                        outputs=[*loaded, r["session"]], api_name="skip").then(**counts).then(**strip)
        r["strip"].select(editor(flow.open_from_strip), inputs=[r["strip_ids"], threshold], outputs=loaded,
                          api_name=False).then(**counts)
        r["import_folder"].click(writes(review.import_folder), inputs=[r["folder"], model, threshold, size],
                                 outputs=[r["io_status"]], api_name="import_folder", **model_queue)
        r["import_coco"].click(writes(review.import_coco),
                               inputs=[r["coco"], r["coco_images"], model, threshold, size],
                               outputs=[r["io_status"]], api_name="import_coco", **model_queue)
        r["import_upload"].click(writes(transfer.import_upload), inputs=[r["upload"], model, threshold, size],
                                 outputs=[r["upload_status"]], api_name="import_upload", **model_queue).then(**counts)
        send_all.click(writes(transfer.import_upload), inputs=[files, model, threshold, size], outputs=[batch_status],
                       api_name=False, **model_queue).then(**counts)
        r["download"].click(writes(transfer.export_download), inputs=[r["since"], r["by"]], outputs=[r["archive"]],
                            api_name="export_download")
        r["export"].click(writes(review.export_coco), inputs=[r["export_dir"]], outputs=[r["io_status"]],
                          api_name="export_coco")
        r["evaluate"].click(writes(review.evaluate_reviewed),
                            outputs=[r["eval_summary"], r["per_class"], r["pr_plot"]], api_name="evaluate")
        r["open_app"].click(bind(review.open_fiftyone, state), outputs=[r["fiftyone_link"]], api_name="open_fiftyone")

        def who_may_do_what(request: gr.Request, profile: gr.OAuthProfile | None) -> str:
            return access_note(config, profile, request)

        demo.load(who_may_do_what, outputs=[access], api_name=False)
    return demo


def launch_options(data_dir: Path) -> dict:
    """What `launch` needs: uploads capped, and file access only to the review media and examples."""
    return {"max_file_size": MAX_UPLOAD, "allowed_paths": [str(Path(data_dir) / "media"), str(EXAMPLES_DIR)]}


def launch(demo: gr.Blocks, state: AppState, **options) -> gr.Blocks:
    """Launch ``demo`` without blocking and mount the FiftyOne App at ``/fiftyone`` of the same server
    (media confined to ``DATA/media``; read-only for visitors who may not change data)."""
    # A full queue answers "busy" at once instead of piling up work nobody will wait for.
    demo.queue(max_size=state.config.queue_size)
    demo.launch(prevent_thread_lock=True, show_error=False, head=KEYBOARD, **launch_options(state.data_dir), **options)
    def app_edit(sample_id: str, scope: dict) -> None:
        who = user_name_in(scope) or "a FiftyOne App user"
        state.store.adopt_outside_edit(sample_id, f"{who} (FiftyOne App)")

    mount_fiftyone(demo.app, [state.data_dir / "media"], functools.partial(may_change_data, state.config), app_edit)
    return demo
