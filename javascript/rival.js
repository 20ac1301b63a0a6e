// RIVAL panel helpers, loaded by A1111 into the page (one global namespace: everything is prefixed).

// The hover tooltips are in rival_titles.js, generated from rival_ext/webui/fields.py.

// "Send the selected result to the RIVAL reference": returns the gallery's selected index, which
// the Python side turns into the reference image.
function rivalSelectedResult(tab, gallery) {
    const index = typeof selected_gallery_index === "function" ? selected_gallery_index() : 0;
    return [Math.max(index, 0), gallery];
}

// hints.js attaches a title only to a SPAN/BUTTON/P/INPUT/LI whose own text equals a `titles` key:
// an image's label is a DIV and a button's text carries a leading space, so these get their
// tooltip from the same `titles` map here, by element id (rivalTitledById, in rival_titles.js).
onUiLoaded(function rivalElementTitles() {
    for (const tab of ["txt2img", "img2img"]) {
        for (const [suffix, key] of Object.entries(window.rivalTitledById || {})) {
            const element = gradioApp().getElementById(`script_${tab}_rival_${suffix}`);
            if (element && titles[key]) {
                element.title = titles[key];
            }
        }
    }
});
