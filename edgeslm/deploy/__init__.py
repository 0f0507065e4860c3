"""``edgeslm deploy``: what it takes to run stored models elsewhere (Kubernetes, so far).

``k8s`` writes a Kustomize base sized from the models' measured memory; the models reach the pod
as a bundle (``edgeslm bundle``) in the image, imported by an init container.
"""
