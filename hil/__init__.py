"""The simulated reference world: tabletop physics, scripted expert, tasks and judge, rollouts and demos.

Modules: ``world`` (pymunk tabletop + OpenCV rendering), ``tasks`` (instruction grammar, chains, judge),
``expert`` (scripted expert), ``rollout`` (closed-loop evaluation of chunk policies), ``demos`` (expert
demonstrations as arrays). See docs/reference-world.md.
"""
