// RIVAL panel helpers, loaded by A1111 into the page (one global namespace: everything is prefixed).

// Hover tooltips: A1111's hints.js reads the global `titles` map (label text -> tooltip).
(function rivalTooltips() {
    const tips = {
        "RIVAL": "Generate images that share the content and style of one reference image (RIVAL, NeurIPS 2023).",
        "Reference image": "The real image whose content and style the generation follows. Any size; it is centre-cropped to your aspect ratio.",
        "Use the init image as reference": "Use img2img's input image as the RIVAL reference instead of the upload.",
        "Application": "A preset of the paper's applications; it fills the controls below with the official values.",
        "t_align (attention switch)": "Self-attention reads only the reference above this timestep, then the reference and itself. Lower = closer to the reference's content.",
        "t_early (normalization until)": "The noise prediction follows the reference's statistics above this timestep. Lower = closer to the reference's colours.",
        "Early plain steps above": "Above this timestep self-attention is left alone (1000 = never).",
        "Reference prompt": "Text of the reference branch: empty, your prompt, or a custom text.",
        "Custom reference prompt": "Used when the reference prompt is 'custom text'.",
        "Initial latent": "Where sampling starts: a seeded shuffle of the inverted reference, the inverted reference itself, or seed noise.",
        "Apply to the hires pass": "Invert the reference again at the hires size and keep RIVAL on in the second pass.",
        "Attention switch rule": "The official code switches when t - 1 <= t_align, the paper when t <= t_align.",
        "Step-wise normalization (AdaIN)": "Normalize the generated noise prediction to the reference's while t > t_early.",
        "Add the inversion reconstruction to the gallery": "Shows the reference inverted and sampled back: how faithful the inversion is.",
        "Use the selected result": "Use the image selected in the gallery as the RIVAL reference.",
    };
    if (typeof titles === "undefined") {
        window.titles = {};
    }
    Object.assign(titles, tips);
})();

// "Send the selected result to the RIVAL reference": returns the gallery's selected index, which
// the Python side turns into the reference image.
function rivalSelectedResult(tab, gallery) {
    const index = typeof selected_gallery_index === "function" ? selected_gallery_index() : 0;
    return [Math.max(index, 0), gallery];
}
