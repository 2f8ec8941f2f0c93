// Package dash holds the dashboard's system test: a real headless Chromium (Debian's
// chromium, installed by make setup), driven through chromedp, against a 3-node
// cluster of real meshnode processes with a deployed model. It signs in, compares the
// page with the plan the API reports, kills a node with SIGKILL and watches the page
// show it dead and its stages move, drains a node from the page, and reads the same
// story back with meshctl events. Screenshots go to test/results/dash/; with
// LAYERMESH_DASH_SCREENSHOT=docs the README's docs/dashboard.png is rewritten too.
package dash
