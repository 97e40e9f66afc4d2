"""The remote tier's reference policy: the reference recipe, wider, trained longer, sampled with more steps, fp32."""
