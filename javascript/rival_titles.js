// Generated from rival_ext/webui/fields.py by `python -m rival_ext.webui.fields`: edit the table there.
// A1111's hints.js turns the global `titles` map (label text -> tooltip) into hover tooltips.
(function rivalTitles() {
    if (typeof titles === "undefined") {
        window.titles = {};
    }
    Object.assign(titles, {
        "RIVAL": "Generate images that share the content and style of one reference image (RIVAL, NeurIPS 2023).",
        "Reference image": "The real image whose content and style the generation follows. Any size; it is centre-cropped to your aspect ratio.",
        "Use the init image as reference": "Use img2img's input image as the reference instead of the upload.",
        "Application": "An application of the paper; it fills the controls below with the official values.",
        "t_align (attention switch)": "Self-attention reads only the reference above this timestep, the reference and itself below. Lower = closer to the reference's content (official 600).",
        "t_early (normalization until)": "Noise statistics follow the reference above this timestep. Lower = closer to the reference's colours (official 600; 400 with ControlNet).",
        "Early plain steps above": "Above this timestep self-attention is left alone, letting the prompt set the layout first (1000 = never; 960 style transfer, 900 editing).",
        "Reference prompt": "Text of the reference branch (inversion and attention): empty for style transfer and editing, the prompt for variations.",
        "Custom reference prompt": "Reference text when 'custom text' is chosen.",
        "Initial latent": "Start from a seeded shuffle of the inverted reference (variations), from the inverted reference itself (editing), or from ordinary seed noise.",
        "Apply to the hires pass": "Invert the reference again at the hires size and keep RIVAL on in the second pass.",
        "Attention switch rule": "When attention switches to [reference, own]: the official code's rule or the paper's.",
        "Step-wise normalization (AdaIN)": "Normalize the generated noise prediction to the reference's while t > t_early.",
        "Add the inversion reconstruction to the gallery": "Add the reference, inverted and sampled back, to the gallery: shows how faithful the inversion is for this model and sampler.",
        "Official CFG, steps and sampler": "Also sample with the paper's settings for the preset: its CFG scale (5 for variations, 7 otherwise), 50 steps and the DDIM sampler.",
        "Attention strength": "How much the reference's attention replaces the image's own: 1 the paper's RIVAL, 0 the image's own attention, below 0 away from the reference (more diverse).",
        "AdaIN strength": "How much the noise statistics follow the reference's (step-wise normalization): 1 fully, 0 not at all.",
        "Layers": "Which self-attention layers follow the reference: all, style (look only), layout (composition only), or block names such as input.8, middle.0, output.1.2 (see README).",
        "Reference weight": "The reference's weight among several references (-1 to 1; 0 leaves it out, below 0 pushes away from it).",
        "Reference 2": "A further reference image (slot 2).",
        "Weight of reference 2": "Reference 2's weight (-1 to 1; 0 leaves it out, below 0 pushes away from it).",
        "Reference 3": "A further reference image (slot 3).",
        "Weight of reference 3": "Reference 3's weight (-1 to 1; 0 leaves it out, below 0 pushes away from it).",
        "Reference 4": "A further reference image (slot 4).",
        "Weight of reference 4": "Reference 4's weight (-1 to 1; 0 leaves it out, below 0 pushes away from it).",
        "Where RIVAL acts": "A mask over the generated image: white follows the reference, black keeps the model's own attention and statistics, grey in between. Empty: everywhere.",
        "Part of the reference": "A mask over the reference: only its white part gives keys, values and statistics. Empty: all of it.",
        "More references": "API: up to 3 further references, [{\"image\": base64, \"weight\": -1..1, \"mask\": base64 (optional)}].",
        "Use the selected result": "Use the image selected in the gallery as the RIVAL reference.",
        "Use the official CFG, steps and sampler": "Set this tab's CFG scale, steps and sampler to the paper's settings for the chosen preset (5 or 7, 50 steps, DDIM)."
    });
    // element-id suffix -> titles key, for the controls hints.js cannot match (rival.js)
    window.rivalTitledById = {
        "reference_image": "Reference image",
        "reference_2": "Reference 2",
        "reference_3": "Reference 3",
        "reference_4": "Reference 4",
        "mask": "Where RIVAL acts",
        "reference_mask": "Part of the reference",
        "use_result": "Use the selected result",
        "use_official": "Use the official CFG, steps and sampler"
    };
})();
