// RIVAL panel helpers, loaded by A1111 into the page (one global namespace: everything is prefixed).

// The hover tooltips are in rival_titles.js, generated from rival_ext/a1111/fields.py.

// "Send the selected result to the RIVAL reference": returns the gallery's selected index, which
// the Python side turns into the reference image.
function rivalSelectedResult(tab, gallery) {
    const index = typeof selected_gallery_index === "function" ? selected_gallery_index() : 0;
    return [Math.max(index, 0), gallery];
}
