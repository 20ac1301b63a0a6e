"""The A1111 host adapter: RIVAL on A1111's loaded ldm/sgm model, through module hooks (``A1111Host``)."""
